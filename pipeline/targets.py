"""What `mtlrec train` and `mtlrec evaluate` work on: a data set's splits, its task names
and kind, and the model that fits it.

`data.kind` picks one of four loaders, and the stages are the same for all of them:
- `logs`: click/conversion logs ingested by `mtlrec ingest` → HPS / MMoE / PLE rankers;
- `multimnist`: MultiMNIST built from MNIST (`features.multimnist`) → LeNet;
- `qm9`: QM9 molecules as graphs (`features.qm9`, `features.qm9_graphs`) → MPNN;
- `molecules`: any SMILES file with target columns (`features.molecules`) → MPNN.
The benchmark data sets need no ingest: they are built from `../shared/data` when a run
starts (MultiMNIST's construction is cached as .npz under `data.cache_dir`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtlrec.features.folder import FeatureInfo, FeaturesFolder
from mtlrec.features.ingest import ingest
from mtlrec.features.multimnist import TASKS as DIGIT_TASKS
from mtlrec.features.multimnist import cache_folder, load_multimnist
from mtlrec.features.spec import BenchmarkRows, MoleculeSpec, MultiMnistSpec, QM9Spec
from mtlrec.features.stream import LogSplit, open_split
from mtlrec.features.tensor_split import TensorSplit
from mtlrec.models.config import ModelConfig
from mtlrec.models.lenet import MultiLeNet
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline.config import Config, to_yaml
from mtlrec.training.loop import Split
from mtlrec.training.tasks import BinaryTask, MulticlassTask, RegressionTask, TaskSet, qm9_tasks

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Target:
    tasks: list[str]
    kind: TaskSet  # the tasks, in `tasks` order
    split: Callable[[str], Split]  # "train" | "valid" | "test" → the split's data
    model: Callable[[ModelConfig, list[int]], nn.Module]  # a fresh model with heads for these tasks
    fingerprint: str  # identifies the data (an MLflow tag of every run)
    artifacts: list[Path] = field(default_factory=list)  # logged with the run's model
    group: str | None = None  # test-split column the metrics are sliced by
    eval_batch_size: int = 8192


def load_target(cfg: Config) -> Target:
    loaders = {"logs": _logs, "multimnist": _multimnist, "qm9": _qm9, "molecules": _molecules}
    return loaders[cfg.data.kind](cfg)


# ------------------------------------------------------------------- ingested logs


def ingest_logs(cfg: Config) -> FeaturesFolder:
    """`mtlrec ingest` of click/conversion logs into `paths.features` (reused when the
    inputs and spec are unchanged)."""
    return ingest(cfg.data, Path(cfg.paths.features), cfg.ingest, resolved_config=to_yaml(cfg))


def build_ranker(model_cfg: ModelConfig, info: FeatureInfo, index: list[int] | None = None) -> MultiTaskRanker:
    """A fresh ranker with a head for each task of `index` (default: every task)."""
    index = list(range(len(info.tasks))) if index is None else index
    return MultiTaskRanker(model_cfg, info.table_sizes, len(info.numeric), len(index), info.pooling,
                           [info.task_info[k].width for k in index])


def _logs(cfg: Config) -> Target:
    features = FeaturesFolder(Path(cfg.paths.features)).require(cfg.data.name)
    info = features.info()

    def split(name: str) -> LogSplit:
        extra = (info.group,) if name == "test" and info.group else ()
        return open_split(features, name, mode=cfg.trainer.data, budget_mb=cfg.trainer.memory_budget_mb,
                          extra_columns=extra)

    return Target(list(info.tasks), TaskSet.of(info.task_info), split,
                  lambda model_cfg, index: build_ranker(model_cfg, info, index), features.fingerprint,
                  [features.artifacts_dir, features.manifest_file], info.group)


# ------------------------------------------------------------------- benchmarks


def _prefix(rows: BenchmarkRows, name: str, n: int) -> int:
    wanted = getattr(rows, name)
    return n if wanted is None else min(wanted, n)


def _multimnist(cfg: Config) -> Target:

    spec: MultiMnistSpec = cfg.data  # type: ignore[assignment]
    mnist = Path(spec.mnist_dir)
    splits = load_multimnist(mnist, seed=spec.construction_seed, n_valid=spec.n_valid,
                             cache_dir=Path(spec.cache_dir) if spec.cache_dir else None, as_float=True,
                             layout=spec.layout)

    def split(name: str) -> TensorSplit:
        s = splits[name]
        n = _prefix(spec.rows, name, len(s))
        return TensorSplit(torch.from_numpy(s.images[:n]), torch.from_numpy(s.labels[:n]))

    fingerprint = cache_folder(Path("."), mnist, spec.construction_seed, spec.n_valid, None,
                               spec.layout).name
    digits = tuple(str(d) for d in range(10))
    kind = TaskSet(tuple(MulticlassTask(t, digits) for t in DIGIT_TASKS))
    return Target(list(DIGIT_TASKS), kind, split, lambda _, index: MultiLeNet(n_tasks=len(index)), fingerprint)


def _qm9(cfg: Config) -> Target:
    # deferred on purpose: torch-geometric adds ~0.5 s to every `mtlrec` command otherwise
    from mtlrec.features.qm9 import TARGETS, load_qm9
    from mtlrec.features.qm9_graphs import EDGE_FEATURES, NODE_FEATURES, GraphSplit, QM9Graphs
    from mtlrec.models.mpnn import MPNN

    spec: QM9Spec = cfg.data  # type: ignore[assignment]
    qm9 = load_qm9(Path(spec.path), seed=spec.split_seed)
    kind = qm9_tasks(TARGETS, qm9.stats.std)

    def split(name: str) -> GraphSplit:
        graphs = QM9Graphs(qm9.splits[name], cutoff=spec.cutoff, bonds_only=spec.edges == "bonds")
        return GraphSplit(graphs, _prefix(spec.rows, name, len(graphs)))

    def model(model_cfg: ModelConfig, index: list[int]) -> MPNN:
        return MPNN(len(NODE_FEATURES), len(EDGE_FEATURES), n_tasks=len(index), hidden=model_cfg.hidden)

    fingerprint = f"qm9-{Path(spec.path).stat().st_size}-seed{spec.split_seed}-{spec.edges}-cutoff{spec.cutoff}"
    return Target([t.name for t in TARGETS], kind, split, model, fingerprint, eval_batch_size=512)


def _molecules(cfg: Config) -> Target:
    # deferred like _qm9's: RDKit and torch-geometric cost every other command their import
    from mtlrec.features import molecules as mol
    from mtlrec.features.qm9_graphs import GraphSplit
    from mtlrec.models.mpnn import MPNN

    spec: MoleculeSpec = cfg.data  # type: ignore[assignment]
    data = mol.load(spec)
    if data.quarantine.height:  # kept, with their reasons, beside the run's other inputs
        folder = Path(cfg.paths.features)
        folder.mkdir(parents=True, exist_ok=True)
        data.quarantine.write_parquet(folder / "quarantine.parquet")
    mean, std = data.stats()
    regression = np.array([t.kind == "regression" for t in spec.targets])
    targets = np.where(regression, (data.targets - mean) / std, data.targets)
    kind = TaskSet(tuple(RegressionTask(t.name, float(m), float(s), unit=t.unit) if t.kind == "regression"
                         else BinaryTask(t.name) for t, m, s in zip(spec.targets, mean, std)),
                   may_skip=bool(np.isnan(data.targets).any()))

    def split(name: str) -> GraphSplit:
        rows = data.splits[name]
        graphs = mol.MoleculeGraphs([data.smiles[i] for i in rows], targets[rows], spec.explicit_h)
        return GraphSplit(graphs, _prefix(spec.rows, name, len(graphs)))

    def model(model_cfg: ModelConfig, index: list[int]) -> MPNN:
        return MPNN(len(mol.NODE_FEATURES), len(mol.EDGE_FEATURES), n_tasks=len(index), hidden=model_cfg.hidden)

    path = Path(spec.path)
    fingerprint = (f"molecules-{path.name}-{path.stat().st_size}-{spec.split.method}{spec.split.seed}-"
                   f"h{int(spec.explicit_h)}")
    return Target([t.name for t in spec.targets], kind, split, model, fingerprint, eval_batch_size=512)
