"""`mtlrec evaluate`: offline evaluation of a trained run on the test split, or of a
served model on new raw logs.

A trained run: writes `<run_dir>/evaluation/`: `metrics.json` (per task AUC, logloss,
calibration; per-group AUC when the data has a group column; Δm% vs the STL run when one
exists) and `report.md` with plots (ROC per task, training curves, calibration), and logs
all of it to the run's MLflow run.

A served model (`model=models:/<name>@champion evaluate.logs=<raw logs>`): the logs are
validated like ingest does and scored through the exported bundle (its own transform +
onnxruntime), so the AUC reported is the AUC of exactly what is served.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import torch

from mtlrec.features import raw
from mtlrec.features.batches import FeatureInfo, SplitData
from mtlrec.features.errors import DataError
from mtlrec.features.ingest import ARTIFACTS_DIR, DATA_DIR
from mtlrec.models.config import ModelConfig
from mtlrec.pipeline import report, tracking
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.train import RUN_FILE, build_model, weights_file
from mtlrec.serving.bundle import Bundle
from mtlrec.training.loop import predict
from mtlrec.training.metrics import delta_m, group_auc, task_metrics

_P_CLIP = 1e-7  # probabilities → logits for the logloss; float32 1.0 would be an infinite logit

log = logging.getLogger(__name__)


def predict_run(run_dir: Path, data: SplitData, info: FeatureInfo) -> np.ndarray:
    """Logits [N, K] of a trained run (STL: each task from its own model)."""
    model_cfg = ModelConfig.model_validate_json((run_dir / "model_config.json").read_text())
    columns = []
    for group in json.loads((run_dir / "history.json").read_text()):
        model = build_model(model_cfg, info, len(info.tasks) if group == "all" else 1)
        model.load_state_dict(torch.load(run_dir / weights_file(group), weights_only=True))
        columns.append(predict(model, data))
    return np.concatenate(columns, axis=1)


def run_evaluate(cfg: Config) -> dict:
    run_dir = Path(cfg.paths.run_dir)
    state_path = run_dir / RUN_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("status") != "trained":
        raise DataError(f"{run_dir} holds no finished training run: run `mtlrec train` first "
                        "with the same data/model/method/seed")
    features = Path(state["features"])
    info = FeatureInfo.load(features / ARTIFACTS_DIR)
    extra = (info.group,) if info.group else ()
    test = SplitData(features / DATA_DIR, "test", info, extra_columns=extra)
    if len(test) == 0:
        raise DataError(f"{features}: the test split is empty")
    logits = predict_run(run_dir, test, info)
    labels = test.labels.numpy()
    metrics: dict = {"split": "test", "rows": len(test), "tasks": task_metrics(labels, logits, info.tasks)}
    aucs = {t: m["auc"] for t, m in metrics["tasks"].items()}
    metrics["mean_auc"] = float(np.mean(list(aucs.values())))
    if info.group:
        metrics["group_auc"] = group_auc(labels, logits, test.extra[info.group], info.tasks)
    stl = _stl_aucs(Path(cfg.evaluate.stl_run), run_dir)
    if stl is not None:
        metrics["stl_auc"] = stl
        metrics["delta_m_pct"] = delta_m(aucs, stl)
    out = run_dir / "evaluation"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    history = json.loads((run_dir / "history.json").read_text())
    plots = report.plots(out, labels, logits, info.tasks, history)
    (out / "report.md").write_text(report.markdown(cfg, run_dir, metrics, plots))
    with tracking.run(cfg.paths.work_dir, cfg.data.name, run_dir.name, state["run_id"]):
        mlflow.log_metrics({f"test_{t}_{k}": v for t, m in metrics["tasks"].items()
                            for k, v in m.items() if np.isfinite(v)})
        mlflow.log_metric("test_mean_auc", metrics["mean_auc"])
        if "delta_m_pct" in metrics:
            mlflow.log_metric("test_delta_m_pct", metrics["delta_m_pct"])
        mlflow.log_artifacts(str(out), "evaluation")
    log.info("evaluate: %s", out / "report.md")
    return metrics


def _stl_aucs(stl_dir: Path, run_dir: Path) -> dict[str, float] | None:
    """Test AUCs of the STL baseline run, evaluated on the same test split."""
    if stl_dir.resolve() == run_dir.resolve():
        return None
    path = stl_dir / "evaluation" / "metrics.json"
    if not path.is_file():
        log.info("evaluate: no evaluated STL run at %s, so no Δm%%", stl_dir)
        return None
    return {t: m["auc"] for t, m in json.loads(path.read_text())["tasks"].items()}


def served_metrics(model: Bundle, rows: raw.RawRows) -> dict:
    """Metrics of a bundle on validated raw rows, scored through its transform + onnxruntime."""
    spec = model.transform.spec
    typed = rows.typed(spec)
    if typed.is_empty():
        raise DataError(f"no good rows to score in {rows.files} ({rows.quarantine.height} quarantined)")
    scores, oov = model.score(typed)
    p = np.clip(scores.astype(np.float64), _P_CLIP, 1 - _P_CLIP)
    labels = typed.select(spec.task_names).to_numpy()
    return {"rows": typed.height, "rows_quarantined": rows.quarantine.height, "files": rows.files,
            "oov_values": dict(zip(model.transform.categorical_names, oov.tolist())),
            "tasks": task_metrics(labels, np.log(p) - np.log1p(-p), spec.task_names)}
