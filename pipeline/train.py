"""`mtlrec train`: train a model on an ingested data set, tracked in MLflow.

The run folder (`paths.run_dir`) holds everything a later stage needs: `run.json`
(MLflow run id, status), the resolved `config.yaml`, `model_config.json`, the best
weights (`model.pt`, or `model-<task>.pt` per task for STL), per-epoch `history.json`,
and the checkpoints. Running the same command again after a crash resumes from the
checkpoint inside the same MLflow run; after a finished run it is an error unless
`train.force=true`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch

from torch import nn

from mtlrec.features.errors import DataError
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline import tracking
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.diagnostics import DiagnosticsLog
from mtlrec.pipeline.targets import load_target
from mtlrec.training.loop import Trainer, TrainResult, seed_everything
from mtlrec.training.mtl.step import make_step
from mtlrec.training.tasks import validation_key

log = logging.getLogger(__name__)
RUN_FILE = "run.json"
# Checkpoints (weights + optimizer moments) above this size stay in the run folder only;
# the best weights (model*.pt) are always logged.
CHECKPOINT_ARTIFACT_MAX_MB = 256


@dataclass(frozen=True)
class TrainedRun:
    folder: Path
    run_id: str
    results: dict[str, TrainResult]  # "all" for a multi-task model, one per task for STL
    score_name: str  # what best_valid_score is, e.g. "mean auc"


def task_groups(cfg: Config, tasks: list[str]) -> dict[str, list[int]]:
    """Which label columns each model trains on: all tasks together, or one per model (STL)."""
    if cfg.method.single_task:
        return {t: [k] for k, t in enumerate(tasks)}
    return {"all": list(range(len(tasks)))}


def weights_file(group: str) -> str:
    return "model.pt" if group == "all" else f"model-{group}.pt"


def run_train(cfg: Config, init: Callable[[nn.Module], None] | None = None) -> TrainedRun:
    """Train (or resume) the run of `cfg`; `init` is applied to each fresh model before
    training (retrain's warm start from the champion; a resumed checkpoint overrides it)."""
    target = load_target(cfg)
    run_dir = Path(cfg.paths.run_dir)
    state = _run_state(run_dir, cfg)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    train, valid = target.split("train"), target.split("valid")
    if len(valid) == 0:
        raise DataError(f"data={cfg.data.name}: the validation split is empty; early stopping needs one")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_mod.save(cfg, run_dir / "config.yaml")
    (run_dir / "model_config.json").write_text(cfg.model.model_dump_json(indent=2))
    name = run_dir.name
    with tracking.run(cfg.paths.work_dir, cfg.data.name, name, state.get("run_id")) as active:
        run_id = active.info.run_id
        where = {"features": cfg.paths.features} if cfg.data.kind == "logs" else {}
        _write_state(run_dir, {"run_id": run_id, "status": "running"} | where)
        if state.get("run_id") is None:
            tracking.log_config(cfg.model_dump(mode="json"))
            mlflow.set_tags({"git_commit": tracking.git_commit(), "stage": "train",
                             "data_fingerprint": target.fingerprint, "method": cfg.method.name,
                             "model": cfg.model.arch, "data": cfg.data.name})
        results = {}
        for group, index in task_groups(cfg, target.tasks).items():
            seed_everything(cfg.seed)
            tasks = [target.tasks[k] for k in index]
            model = target.model(cfg.model, len(index))
            if init is not None:
                init(model)
            prefix = "" if group == "all" else f"{group}."
            trainer = Trainer(
                model, make_step(cfg.method, model, cfg.trainer, len(index), cfg.seed), cfg.trainer, tasks,
                index, cfg.seed,
                checkpoint_path=run_dir / f"checkpoint-{group}.pt",
                on_epoch=lambda epoch, row, p=prefix: mlflow.log_metrics(
                    {p + k: float(v) for k, v in row.items() if k != "epoch"}, step=epoch),
                on_diagnostics=DiagnosticsLog(run_dir / f"diagnostics-{group}.jsonl", tasks, prefix),
                kind=target.kind, eval_batch_size=target.eval_batch_size,
            )
            results[group] = trainer.fit(train, valid)
            torch.save(trainer.model.state_dict(), run_dir / weights_file(group))
        history = {g: r.history for g, r in results.items()}
        (run_dir / "history.json").write_text(json.dumps(history, indent=2))
        mlflow.log_metrics({f"{'' if g == 'all' else g + '.'}best_{validation_key(target.kind)}":
                            r.best_valid_score for g, r in results.items()})
        for path in target.artifacts:
            (mlflow.log_artifacts if path.is_dir() else mlflow.log_artifact)(str(path), "features")
        for f in ("config.yaml", "model_config.json", "history.json"):
            mlflow.log_artifact(str(run_dir / f))
        for group in results:
            mlflow.log_artifact(str(run_dir / weights_file(group)), "model")
            ckpt = run_dir / f"checkpoint-{group}.pt"
            if ckpt.stat().st_size <= CHECKPOINT_ARTIFACT_MAX_MB * 2**20:
                mlflow.log_artifact(str(ckpt), "checkpoint")
        _write_state(run_dir, {"run_id": run_id, "status": "trained"} | where)
    log.info("train: %s done (MLflow run %s)", run_dir, run_id)
    return TrainedRun(run_dir, run_id, results, f"mean {target.kind.select}")


def _run_state(run_dir: Path, cfg: Config) -> dict:
    path = run_dir / RUN_FILE
    if not path.is_file():
        return {}
    state = json.loads(path.read_text())
    if state.get("status") == "running":
        return state  # interrupted: resume from the checkpoints, same MLflow run
    if not cfg.train.force:
        raise DataError(f"{run_dir} is already trained; evaluate it, or pass train.force=true "
                        "to train it again from scratch")
    shutil.rmtree(run_dir)
    return {}


def _write_state(run_dir: Path, state: dict) -> None:
    tmp = run_dir / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(run_dir / RUN_FILE)
