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

import logging
import re
import tempfile
from pathlib import Path

import mlflow
import numpy as np

from mtlrec import files
from mtlrec.features import labels, raw
from mtlrec.features.folder import WEIGHT_COL
from mtlrec.features.errors import DataError
from mtlrec.pipeline import report, tracking
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.registry import load_served
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.pipeline.targets import Target, load_target
from mtlrec.serving.bundle import Bundle
from mtlrec.training.loop import Split, predict
from mtlrec.training.metrics import delta_m, group_auc
from mtlrec.training.tasks import TaskSet

_UNSAFE = re.compile(r"[^\w.-]+")  # what a file name of the evaluated model's label may not hold

log = logging.getLogger(__name__)


def predict_run(run: RunFolder, data: Split, target: Target) -> np.ndarray:
    """Outputs [N, K, …] of a trained run (STL: each task from its own model)."""
    models = run.load_models(target.model, target.tasks)
    return np.concatenate([predict(m, data, target.eval_batch_size) for m in models.values()], axis=1)


def evaluate_run(cfg: Config) -> dict:
    """Test metrics of the trained run of `cfg`, its report, and both logged to its MLflow run."""
    run = RunFolder(cfg.paths.run_dir)
    state = run.trained()
    if state.features is not None:  # the ingested data the run was trained on
        cfg = cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"features": state.features})})
    target = load_target(cfg)
    test = target.split("test")
    if len(test) == 0:
        raise DataError(f"data={cfg.data.name}: the test split is empty")
    outputs = predict_run(run, test, target)
    labels = test.labels.numpy()
    weights = None if test.weights is None else test.weights.numpy()
    kind = target.kind
    headline = {t.name: t.metric for t in kind.tasks}  # each task's own: AUC, MAE, accuracy
    metrics: dict = {"split": "test", "rows": len(test), "metric": "/".join(kind.metric_names),
                     "headline": headline, "tasks": kind.metrics(labels, outputs, weights)}
    if kind.units:
        metrics["units"] = kind.units
    values = {t: m[headline[t]] for t, m in metrics["tasks"].items()}
    for name in dict.fromkeys(kind.metric_names + [kind.select]):  # QM9: MAE in original and std units
        having = [m[name] for m in metrics["tasks"].values() if name in m]
        metrics[f"mean_{name}"] = float(np.nanmean(having)) if having else float("nan")
    scores = kind.binary_scores(labels, outputs)
    if target.group and scores:
        names, ys, zs = zip(*scores)
        metrics["group_auc"] = group_auc(np.stack(ys, 1), np.stack(zs, 1), test.extra[target.group], list(names))
    stl = _stl_metric(RunFolder(cfg.evaluate.stl_run), run, headline)
    if stl is not None:
        metrics["stl"] = stl
        metrics["delta_m_pct"] = delta_m(values, stl, kind.lower_is_better)
    run.save_metrics(metrics)
    plots = report.plots(run.evaluation, labels, outputs, run.history(), kind, run.diagnostics_files())
    files.write_text(run.report_file, report.markdown(cfg, run.path.name, metrics, plots))
    with tracking.run(cfg.paths.work_dir, cfg.data.name, run.path.name, state.run_id):
        mlflow.log_metrics({f"test_{t}_{k}": v for t, m in metrics["tasks"].items()
                            for k, v in m.items() if np.isfinite(v)})
        mlflow.log_metrics({f"test_mean_{name}": metrics[f"mean_{name}"] for name in kind.metric_names
                            if np.isfinite(metrics[f"mean_{name}"])})
        if "delta_m_pct" in metrics:
            mlflow.log_metric("test_delta_m_pct", metrics["delta_m_pct"])
        mlflow.log_artifacts(str(run.evaluation), run.evaluation.name)
    log.info("evaluate: %s", run.report_file)
    return metrics


def _stl_metric(stl: RunFolder, run: RunFolder, metric: dict[str, str]) -> dict[str, float] | None:
    """Per-task test metric (`metric[task]`) of the STL baseline run, evaluated on the same
    test split."""
    if stl.path.resolve() == run.path.resolve():
        return None
    metrics = stl.metrics()
    if metrics is None:
        log.info("evaluate: no evaluated STL run at %s, so no Δm%%", stl.path)
        return None
    return {t: m[metric[t]] for t, m in metrics["tasks"].items()}


def served_metrics(model: Bundle, rows: raw.RawRows, chunk_rows: int = 65_536) -> dict:
    """Metrics of a bundle on validated raw rows, scored through its transform + onnxruntime
    `chunk_rows` rows at a time (what is held is the scores and labels, not the rows): each
    task's own metrics (AUC and logloss, MAE, accuracy …), weighted by the sample weight
    when the data has one."""
    spec, transform = model.transform.spec, model.transform
    if rows.rows_good == 0:
        raise DataError(f"no good rows to score in {rows.files} ({rows.quarantine.height} quarantined)")
    scores, targets, weights = [], [], []
    oov = np.zeros(len(transform.categorical_names), dtype=np.int64)
    encoded = labels.encode(spec, transform.label_stats)
    for typed in rows.typed_chunks(spec, chunk_rows):
        s, counts = model.score(typed)
        scores.append(s)
        targets.append(typed.select(encoded).to_numpy())
        if spec.weight is not None:
            weights.append(typed[WEIGHT_COL].to_numpy())
        oov += counts
    kind = TaskSet.of(model.task_info)
    w = np.repeat(np.concatenate(weights)[:, None], len(kind.tasks), axis=1) if weights else None
    outputs = kind.outputs_from_answers(np.concatenate(scores))
    return {"rows": rows.rows_good, "rows_quarantined": rows.quarantine.height, "files": rows.files,
            "oov_values": dict(zip(transform.categorical_names, oov.tolist())),
            "tasks": kind.metrics(np.concatenate(targets).astype(np.float64), outputs, w)}


def evaluate_served(cfg: Config) -> tuple[dict, Path]:
    """AUC/logloss of the served model (`serve.model`) on new raw logs (`evaluate.logs`),
    written to `<work_dir>/evaluations/<model>-v<version>.json`; returns (metrics, that file)."""
    version, model = load_served(cfg)
    # a registry version is a number; a bundle folder's "version" is its resolved path
    label = f"{cfg.serve.model.removeprefix('models:/')}-v{version if version.isdigit() else Path(version).name}"
    out = Path(cfg.paths.work_dir) / "evaluations" / (_UNSAFE.sub("_", label) + ".json")
    Path(cfg.paths.work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cfg.paths.work_dir) as tmp:  # on the data's disk, not /tmp
        rows = raw.read(model.transform.spec, cfg.evaluate.logs, Path(tmp) / "good.parquet")
        metrics = served_metrics(model, rows) | {"model": cfg.serve.model, "version": version}
    files.write_json(out, metrics)
    return metrics, out
