"""Data-parallel training under `torchrun`: which part of every batch this process trains
on, and the gathering of each rank's predictions into the whole split's.

`torchrun --nproc_per_node=N $(which mtlrec) train …` starts N processes with RANK and
WORLD_SIZE set; `shard_from_env` joins them into one process group (gloo on the CPU,
NCCL on GPUs) and returns the process's `Shard`. Every rank holds the whole model, trains
on its rows of each global batch (`trainer.batch_size` rows per rank: the global batch is
N times that), and the multi-task step sums the ranks' gradients before any method part
sees them (`training.mtl.collective`), so every rank takes the step one process takes on
the global batch. Rank 0 alone writes checkpoints and talks to MLflow. A plain
`mtlrec train` (no WORLD_SIZE) is the single-process path, unchanged.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from mtlrec.features.batches import Shard


def shard_from_env(device: torch.device) -> Shard:
    """This process's shard: Shard() without torchrun, else its rank in the process group
    (initialised here on first use)."""
    if "WORLD_SIZE" not in os.environ:  # not launched by torchrun (which sets it, to 1 too)
        return Shard()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size())


def gather_batches(pieces: list[np.ndarray | None], shard: Shard) -> np.ndarray:
    """Each rank's outputs of the global batches 0, 1, … (None: its part was empty) → the
    whole split's rows in order: batch i is rank 0's part of it, then rank 1's, …"""
    if shard.world > 1:
        gathered: list = [None] * shard.world
        dist.all_gather_object(gathered, pieces)
        pieces = [part for i in range(len(pieces)) for part in (g[i] for g in gathered)]
    return np.concatenate([p for p in pieces if p is not None])


def rank0_decides(flag: bool, shard: Shard) -> bool:
    """Rank 0's `flag` on every rank: a decision from a rank's own clock (a mid-epoch
    checkpoint, whose table shards every rank writes) must be the same everywhere."""
    if shard.world == 1:
        return flag
    out = torch.tensor([int(flag)])
    dist.broadcast(out, src=0)
    return bool(out.item())


def close() -> None:
    """At the end of a torchrun job: every rank waits until all are done (rank 0 writes the
    run folder last), then the process group closes. A rank that exits with it open can
    abort at interpreter exit ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
