"""`mtlrec train`: train a model on a data set, tracked in MLflow, into a run folder.

The run folder (`paths.run_dir`, see `run_folder.RunFolder`) holds everything a later
stage needs. Running the same command again after a crash resumes from the checkpoints
inside the same MLflow run; after a finished run it is an error unless `train.force=true`.

Under `torchrun` (`training.distributed`) every rank trains; rank 0 alone writes the run
folder and talks to MLflow, the others train in step with it and write nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import torch
from torch import nn

from mtlrec.features.batches import Shard
from mtlrec.features.errors import DataError
from mtlrec.pipeline import tracking
from mtlrec.pipeline.config import Config, to_yaml
from mtlrec.pipeline.diagnostics import DiagnosticsLog
from mtlrec.pipeline.run_folder import MULTI_TASK, RunFolder, RunState, model_groups
from mtlrec.pipeline.targets import Target, load_target
from mtlrec.training import distributed
from mtlrec.training.loop import NonFiniteLoss, Trainer, TrainResult, pick_device, seed_everything
from mtlrec.training.mtl.step import make_step
from mtlrec.training.sharding import ShardedRanker
from mtlrec.training.tasks import validation_key

log = logging.getLogger(__name__)
# Checkpoints (weights + optimizer moments) above this size stay in the run folder only;
# the best weights are always logged.
CHECKPOINT_ARTIFACT_MAX_MB = 256


@dataclass(frozen=True)
class TrainedRun:
    folder: RunFolder
    run_id: str
    results: dict[str, TrainResult]  # per model of the run (`run_folder.model_groups`)
    score_names: dict[str, str]  # per model: what best_valid_score is, e.g. "mean auc"


def train_run(cfg: Config, init: Callable[[nn.Module], None] | None = None) -> TrainedRun:
    """Train (or resume) the run of `cfg`; `init` is applied to each fresh model before
    training (retrain's warm start from the champion; a resumed checkpoint overrides it)."""
    target = load_target(cfg)
    run = RunFolder(cfg.paths.run_dir)
    shard = distributed.shard_from_env(pick_device(cfg.trainer.device))
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    train, valid = target.split("train"), target.split("valid")
    if len(valid) == 0:
        raise DataError(f"data={cfg.data.name}: the validation split is empty; early stopping needs one")
    groups = model_groups(target.tasks, cfg.method.single_task)
    score_names = {name: f"mean {target.kind.subset(index).select}" for name, index in groups.items()}
    if shard.rank != 0:  # trains in step with rank 0 (which resumes or clears the run first)
        results = {}
        for name, index in model_groups(target.tasks, cfg.method.single_task).items():
            trainer = _trainer(cfg, target, run, name, index, init, shard)
            results[name] = trainer.fit(train, valid)
            trainer.model.state_dict()  # with sharded tables a collective gather: join rank 0's
        distributed.close()
        return TrainedRun(run, "", results, score_names)
    resumed = _resumable_state(run, cfg.train.force)
    run.save_config(to_yaml(cfg), cfg.model)
    features = cfg.paths.features if cfg.data.kind == "logs" else None
    with tracking.run(cfg.paths.work_dir, cfg.data.name, run.path.name,
                      resumed.run_id if resumed else None) as active:
        run_id = active.info.run_id
        run.save_state(RunState(run_id, "running", features))
        if resumed is None:
            tracking.log_config(cfg.model_dump(mode="json"))
            mlflow.set_tags({"git_commit": tracking.git_commit(), "stage": "train",
                             "data_fingerprint": target.fingerprint, "method": cfg.method.name,
                             "model": cfg.model.arch, "data": cfg.data.name})
        results = {}
        for name, index in model_groups(target.tasks, cfg.method.single_task).items():
            trainer = _trainer(cfg, target, run, name, index, init, shard, observed=True)
            try:
                results[name] = trainer.fit(train, valid)
            except NonFiniteLoss as exc:  # recorded, so no later stage exports a diverged run
                run.save_state(RunState(run_id, "failed", features, reason=str(exc)))
                raise
            run.save_weights(name, trainer.model.state_dict())
        run.save_history({name: r.history for name, r in results.items()})
        mlflow.log_metrics({f"{'' if name == MULTI_TASK else name + '.'}best_"
                            f"{validation_key(target.kind.subset(groups[name]))}": r.best_valid_score
                            for name, r in results.items()})
        run.log_training(target.artifacts, CHECKPOINT_ARTIFACT_MAX_MB)
        run.save_state(RunState(run_id, "trained", features))
    distributed.close()
    log.info("train: %s done (MLflow run %s)", run.path, run_id)
    return TrainedRun(run, run_id, results, score_names)


def _trainer(cfg: Config, target: Target, run: RunFolder, name: str, index: list[int],
             init: Callable[[nn.Module], None] | None, shard: Shard, observed: bool = False) -> Trainer:
    """The trainer of one model of the run (seeded alike on every rank); `observed`: its
    epochs go to MLflow and its diagnostics to the run folder (rank 0)."""
    seed_everything(cfg.seed)
    tasks = [target.tasks[k] for k in index]
    model = target.model(cfg.model, index)
    if init is not None:
        init(model)
    if cfg.trainer.sharding.tables != "replicated":
        model = ShardedRanker(model, cfg.trainer.sharding, pick_device(cfg.trainer.device))
        if shard.rank == 0:
            log.info("embedding tables sharded by DistributedModelParallel:\n%s", model.describe())
    prefix = "" if name == MULTI_TASK else f"{name}."
    return Trainer(
        model, make_step(cfg.method, model, cfg.trainer, len(index), cfg.seed), cfg.trainer, tasks,
        index, cfg.seed,
        checkpoint_path=run.checkpoint(name),
        on_epoch=(lambda epoch, row: mlflow.log_metrics(
            {prefix + k: float(v) for k, v in row.items() if k != "epoch"}, step=epoch)) if observed else None,
        on_diagnostics=DiagnosticsLog(run.diagnostics(name), tasks, prefix) if observed else None,
        kind=target.kind.subset(index), eval_batch_size=target.eval_batch_size, shard=shard,
    )


def _resumable_state(run: RunFolder, force: bool) -> RunState | None:
    """The state of an interrupted run to resume (same MLflow run, from its checkpoints);
    None for a fresh run. A finished, failed or unreadable run is an error unless `force`,
    which clears it."""
    if force:
        run.clear()
        return None
    state = run.state()
    if state is None or state.status == "running":
        return state
    if state.status == "failed":
        raise DataError(f"{run.path}: the run failed ({state.reason})")
    raise DataError(f"{run.path} is already trained; evaluate it, or pass train.force=true "
                    "to train it again from scratch")

