"""`mtlrec evaluate`: offline evaluation of a trained run on the test split, or of a
served model on new raw logs.

A trained run: writes `<run_dir>/evaluation/`: `metrics.json` (per task: AUC, logloss and
calibration for click/conversion logs, with per-group AUC when the data has a group
column; accuracy for MultiMNIST; MAE in original units for QM9; Δm% vs the STL run when
one exists) and `report.md` with plots (training curves, conflict diagnostics; ROC and
calibration for binary tasks), and logs all of it to the run's MLflow run.

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
from mtlrec.features.errors import DataError
from mtlrec.models.config import ModelConfig
from mtlrec.pipeline import report, tracking
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.targets import Target, load_target
from mtlrec.pipeline.train import RUN_FILE, weights_file
from mtlrec.serving.bundle import Bundle
from mtlrec.training.loop import Split, predict
from mtlrec.training.metrics import delta_m, group_auc, task_metrics
from mtlrec.training.tasks import RegressionTasks

_P_CLIP = 1e-7  # probabilities → logits for the logloss; float32 1.0 would be an infinite logit

log = logging.getLogger(__name__)


def predict_run(run_dir: Path, data: Split, target: Target) -> np.ndarray:
    """Outputs [N, K, …] of a trained run (STL: each task from its own model)."""
    model_cfg = ModelConfig.model_validate_json((run_dir / "model_config.json").read_text())
    columns = []
    for group in json.loads((run_dir / "history.json").read_text()):
        model = target.model(model_cfg, len(target.tasks) if group == "all" else 1)
        model.load_state_dict(torch.load(run_dir / weights_file(group), weights_only=True))
        columns.append(predict(model, data, target.eval_batch_size))
    return np.concatenate(columns, axis=1)


def run_evaluate(cfg: Config) -> dict:
    run_dir = Path(cfg.paths.run_dir)
    state_path = run_dir / RUN_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("status") != "trained":
        raise DataError(f"{run_dir} holds no finished training run: run `mtlrec train` first "
                        "with the same data/model/method/seed")
    if "features" in state:  # the ingested data the run was trained on
        cfg = cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"features": state["features"]})})
    target = load_target(cfg)
    test = target.split("test")
    if len(test) == 0:
        raise DataError(f"data={cfg.data.name}: the test split is empty")
    outputs = predict_run(run_dir, test, target)
    labels = test.labels.numpy()
    kind, tasks = target.kind, target.tasks
    metrics: dict = {"split": "test", "rows": len(test), "metric": kind.metric,
                     "tasks": kind.metrics(labels, outputs, tasks)}
    if isinstance(kind, RegressionTasks):
        metrics["units"] = kind.unit
    values = {t: m[kind.metric] for t, m in metrics["tasks"].items()}
    for name in dict.fromkeys((kind.metric, kind.select)):  # QM9: MAE in original and in std units
        metrics[f"mean_{name}"] = float(np.mean([m[name] for m in metrics["tasks"].values()]))
    if target.group:
        metrics["group_auc"] = group_auc(labels, outputs, test.extra[target.group], tasks)
    stl = _stl_metric(Path(cfg.evaluate.stl_run), run_dir, kind.metric)
    if stl is not None:
        metrics["stl"] = stl
        lower = frozenset() if kind.higher_is_better else frozenset(tasks)
        metrics["delta_m_pct"] = delta_m(values, stl, lower)
    out = run_dir / "evaluation"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    history = json.loads((run_dir / "history.json").read_text())
    plots = report.plots(out, labels, outputs, tasks, history, kind)
    (out / "report.md").write_text(report.markdown(cfg, run_dir, metrics, plots))
    with tracking.run(cfg.paths.work_dir, cfg.data.name, run_dir.name, state["run_id"]):
        mlflow.log_metrics({f"test_{t}_{k}": v for t, m in metrics["tasks"].items()
                            for k, v in m.items() if np.isfinite(v)})
        mlflow.log_metric(f"test_mean_{kind.metric}", metrics[f"mean_{kind.metric}"])
        if "delta_m_pct" in metrics:
            mlflow.log_metric("test_delta_m_pct", metrics["delta_m_pct"])
        mlflow.log_artifacts(str(out), "evaluation")
    log.info("evaluate: %s", out / "report.md")
    return metrics


def _stl_metric(stl_dir: Path, run_dir: Path, metric: str) -> dict[str, float] | None:
    """Per-task test metric of the STL baseline run, evaluated on the same test split."""
    if stl_dir.resolve() == run_dir.resolve():
        return None
    path = stl_dir / "evaluation" / "metrics.json"
    if not path.is_file():
        log.info("evaluate: no evaluated STL run at %s, so no Δm%%", stl_dir)
        return None
    return {t: m[metric] for t, m in json.loads(path.read_text())["tasks"].items()}


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
