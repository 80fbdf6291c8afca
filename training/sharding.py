"""Embedding tables sharded over the ranks by torchrec's DistributedModelParallel (DMP).

Under `torchrun` with `trainer.sharding.tables` other than "replicated", the ranker's
EmbeddingBagCollection (`model.embedding_impl=torchrec`) is sharded by DMP: torchrec's
planner places each table (or the sharding type the config forces on every table), the
lookups travel by all-to-all, and each table shard is updated by torchrec's fused
optimizer inside the backward pass (`trainer.sharding.optimizer`; CPU kernels offer SGD
and (row-wise) Adagrad, not Adam). The dense parameters stay whole on every rank and
follow the data-parallel path of `training.mtl.collective` (DMP's own DDP wrapper is not
used: the multi-task step sums per-task gradient rows itself before any method sees them).

Why the all-to-all's gradient division is turned off: torchrec divides the embeddings'
gradient by the world size, which suits a loss that is each rank's own mean. Our task
losses are already means over the global batch (`collective.batch_mean`), so the
undivided sum of the ranks' contributions is the global gradient: a 2-rank run then
takes the 1-rank run's steps (tests/test_distributed_sharding.py).

`ShardedRanker` keeps the ranker's interface (forward, shared/task parameters) and its
state-dict keys; its state dict holds whole tables (the shards gathered) and loading one
copies each rank's slices out of whole tables, which is what the run folder's weights, the
export and retrain's warm start read and write. Checkpoints do not gather: `ShardedWeights`
writes each rank's shards (and the tables' optimizer moments) with
torch.distributed.checkpoint into a folder beside the checkpoint file, the trainer's best
weights too, and a run saved on N ranks resumes on M (DCP reshards on load).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed import comm_ops
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingType

from mtlrec.models.embedding import TorchrecEmbeddings
from mtlrec.training import checkpoint
from mtlrec.training.config import ShardingConfig

# DMP's state dicts are ShardedTensors (torchrec's format); their deprecation notice is
# torchrec's to act on, not a user's.
warnings.filterwarnings("ignore", message="Please use DTensor instead", category=FutureWarning)

TABLE_OPTIMIZERS = {"rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
                    "adagrad": EmbOptimType.EXACT_ADAGRAD, "sgd": EmbOptimType.EXACT_SGD}


def whole(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict with every ShardedTensor replaced by the whole tensor, on every rank.
    Collective: every rank calls it with the same keys. Shards never overlap, so each rank
    writes its own into zeros and the sum over ranks is the whole."""
    out = {}
    for key, value in state.items():
        if isinstance(value, ShardedTensor):
            tensor = torch.zeros(value.size(), dtype=value.dtype)
            for shard in value.local_shards():
                tensor[_where(shard)] = shard.tensor.detach().cpu()
            dist.all_reduce(tensor)
            out[key] = tensor
        else:
            out[key] = value.detach().clone()
    return out


def fill(live: Mapping[str, Any], saved: Mapping[str, torch.Tensor]) -> None:
    """Copy the whole tensors of `saved` into the live state dict in place: a ShardedTensor
    takes this rank's slices. Local: no collective."""
    if set(live) != set(saved):
        raise ValueError(f"saved keys differ from the model's: missing {sorted(set(live) - set(saved))[:5]}, "
                         f"unexpected {sorted(set(saved) - set(live))[:5]}")
    for key, value in live.items():
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                shard.tensor.detach().copy_(saved[key][_where(shard)])
        elif tuple(saved[key].shape) != tuple(value.shape):
            raise ValueError(f"{key}: saved shape {tuple(saved[key].shape)}, the model's {tuple(value.shape)}")
        else:
            value.detach().copy_(saved[key])


def _where(shard) -> tuple[slice, ...]:
    offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
    return tuple(slice(o, o + s) for o, s in zip(offsets, sizes))


class TableSharder(EmbeddingBagCollectionSharder):
    """torchrec's sharder, offering row-wise sharding on the CPU too: torchrec lists it for
    CUDA only (and its own gloo tests skip it), yet on gloo a 2-rank row-wise run takes the
    1-rank run's steps (tests/test_distributed_sharding.py)."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = super().sharding_types(compute_device_type)
        return types + ([ShardingType.ROW_WISE.value] if ShardingType.ROW_WISE.value not in types else [])


class TableOptimizer(torch.optim.Optimizer):
    """DMP's fused table optimizer as one more optimizer of the run: the shards are updated
    inside the backward, so `step` only hands the fused optimizer the scheduled learning
    rate (for the next backward). It shows the scheduler one param group whatever tables a
    rank holds (a rank's fused optimizer has a group per table it holds, maybe none); its
    moments are checkpointed with the shards (`ShardedWeights`), its state dict is the lr."""

    def __init__(self, fused: torch.optim.Optimizer, lr: float) -> None:
        self.fused = fused
        super().__init__([torch.zeros(0, requires_grad=True)], {"lr": lr})  # the schedule's handle

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The tables have no `.grad`: nothing to clear."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.fused.param_groups:
            group["lr"] = self.param_groups[0]["lr"]
        self.fused.step()

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.param_groups[0]["lr"]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.param_groups[0]["lr"] = state_dict["lr"]
        self.step()


class ShardedWeights:
    """A sharded model's weights (and its tables' optimizer moments) written with
    torch.distributed.checkpoint: every rank writes its own shards into a folder beside the
    checkpoint file (`<checkpoint>.<tag>/`), and the checkpoint holds the folder's name, so
    no rank ever holds a whole table. Loading reshards: a run saved on N ranks resumes on M.
    The trainer keeps its best weights the same way (on disk, not in memory)."""

    def __init__(self, checkpoint_path: Path) -> None:
        self.path = Path(checkpoint_path)

    def current(self, model: "ShardedRanker", tag: str) -> str:
        return self._save(model, tag, optimizer=True)

    def snapshot(self, model: "ShardedRanker", tag: str) -> str:
        return self._save(model, tag, optimizer=False)

    def _save(self, model: "ShardedRanker", tag: str, optimizer: bool) -> str:
        name = f"{self.path.stem}.{tag}"
        dcp.save(_dcp_state(model, optimizer), checkpoint_id=self.path.parent / name)
        return name

    def load(self, model: "ShardedRanker", saved: str) -> None:
        folder = self.path.parent / saved
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: the sharded weights this checkpoint names are missing")
        saved_keys = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
        optimizer = any(key.startswith("tables") for key in saved_keys)  # a checkpoint's, not a best's
        state = _dcp_state(model, optimizer)
        dcp.load(state, checkpoint_id=folder)
        model.dmp.load_state_dict(state["model"])
        if optimizer:
            model.table_optimizer.fused.load_state_dict(state["tables"])

    def prune(self, keep: list[Any]) -> None:
        """Rank 0, after the checkpoint file is written: remove the folders that neither it
        (`keep`) nor the previous checkpoint (its fallback) names; while the previous one
        cannot be read, remove nothing."""
        previous = checkpoint.read(checkpoint.previous(self.path))
        if previous is None and checkpoint.previous(self.path).exists():
            return
        names = set(keep) | ({previous["model"], previous["best_weights"]} if previous else set())
        for folder in self.path.parent.glob(f"{self.path.stem}.*"):
            if folder.is_dir() and folder.name not in names:
                shutil.rmtree(folder, ignore_errors=True)


def _dcp_state(model: "ShardedRanker", optimizer: bool) -> dict[str, Any]:
    state: dict[str, Any] = {"model": model.dmp.state_dict()}
    if optimizer:
        state["tables"] = model.table_optimizer.fused.state_dict()
    return state


class ShardedRanker(nn.Module):
    """A ranker whose EmbeddingBagCollection DMP has sharded over the process group."""

    def __init__(self, ranker: nn.Module, cfg: ShardingConfig, device: torch.device) -> None:
        super().__init__()
        if not isinstance(getattr(ranker, "embeddings", None), TorchrecEmbeddings):
            raise ValueError(f"trainer.sharding.tables={cfg.tables} shards torchrec's "
                             "EmbeddingBagCollection: set model.embedding_impl=torchrec")
        if not dist.is_initialized():
            raise ValueError(f"trainer.sharding.tables={cfg.tables} shards the tables over the ranks "
                             "of a torchrun launch: run `torchrun --nproc_per_node=N $(which mtlrec) "
                             "train …`, or set trainer.sharding.tables=replicated")
        comm_ops.set_gradient_division(False)  # the losses are global means (module docstring)
        initial = {k: v.clone() for k, v in ranker.state_dict().items()}
        sharder = TableSharder(fused_params={
            "optimizer": TABLE_OPTIMIZERS[cfg.optimizer], "learning_rate": cfg.lr})
        constraints = (None if cfg.tables == "planner" else
                       {c.name: ParameterConstraints(sharding_types=[cfg.tables])
                        for c in ranker.embeddings.configs})
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=dist.get_world_size(), compute_device=device.type),
            constraints=constraints)
        self.plan = planner.collective_plan(ranker, [sharder], dist.group.WORLD)
        self.dmp = DistributedModelParallel(ranker, device=device, plan=self.plan, sharders=[sharder],
                                            init_data_parallel=False)
        fill(self.dmp.state_dict(), initial)  # the single-process initialisation, on any world size
        # Tables DMP shards (all but data_parallel ones) are updated in the backward by the
        # fused optimizer, never by ours; data-parallel tables are plain replicated parameters.
        named = dict(ranker.named_parameters())
        self._in_backward = [named[f"{path}.embedding_bags.{table}.weight"]
                             for path, tables in self.plan.plan.items() for table, spec in tables.items()
                             if spec.sharding_type != "data_parallel"]
        self.table_optimizer = TableOptimizer(self.dmp.fused_optimizer, cfg.lr)

    def forward(self, sparse, dense: torch.Tensor) -> torch.Tensor:
        return self.dmp.module(sparse, dense)

    def updated_in_backward(self) -> list[nn.Parameter]:
        return list(self._in_backward)

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        return self.dmp.module.task_parameters(k)

    def shared_parameters(self, include_embeddings: bool = True) -> list[nn.Parameter]:
        """θ without the sharded tables (their per-task gradients are not taken)."""
        if include_embeddings and self._in_backward:
            raise ValueError("method.grad_on=shared_and_embeddings takes per-task gradients of the "
                             "tables, which sharded tables do not give (their optimizer runs in the "
                             "backward): use grad_on=shared, or trainer.sharding.tables=replicated")
        return self.dmp.module.shared_parameters(include_embeddings)

    def describe(self) -> str:
        """The plan: each table's sharding type and ranks."""
        return str(self.plan)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """The ranker's state dict with whole tables (collective: every rank calls it)."""
        return whole(self.dmp.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Whole tables (a state dict of the single-process ranker) into this rank's shards."""
        fill(self.dmp.state_dict(), state_dict)


def updated_in_backward(model: nn.Module) -> list[nn.Parameter]:
    """Parameters an optimizer inside the backward updates (sharded tables): the step leaves
    them out of its gradient lists and optimizers, and runs a full backward to reach them."""
    return model.updated_in_backward() if isinstance(model, ShardedRanker) else []


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, ShardedRanker)


def table_optimizer(model: nn.Module) -> TableOptimizer | None:
    return model.table_optimizer if isinstance(model, ShardedRanker) else None
