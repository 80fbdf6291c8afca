"""The run that tests/test_distributed_methods.py launches with torchrun: each method of
METHODS trains the Tiny two-task model for STEPS steps on this rank's part of every
global batch (gloo, CPU), and the rank writes its per-step losses, final parameters and
step state to <folder>/rank<r>.json. `run(name, 0, 1)` is the single-process reference.

The data: task 1's labels pull against task 0 in the first half of every batch (rank 0's
part, with two ranks) and with it, three times as hard, in the second half: the ranks'
local task gradients conflict, the global ones do not. The `…_missing` runs also lose
task 1's labels on most of the first half's rows and on every row of every fourth batch:
each task's loss must be its mean over the global batch's labelled rows (not a mean of
the ranks' means), and a batch without task 1 must leave it out of the step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from helpers import preset
from mtlrec.training.config import TrainerConfig
from mtlrec.training.mtl.step import make_step
from mtlrec.training.step import Pass
from test_mtl_state import Tiny

METHODS = {
    "ew": "ew", "pcgrad": "pcgrad", "mocograd": "mocograd", "adatask": "adatask", "dbmtl": "dbmtl",
    "dtjs": "dtjs", "grouped": "grouped",
    "mgda_missing": "mgda", "dbmtl_missing": "dbmtl", "grouped_missing": "grouped",
}
STEPS, GLOBAL_BATCH, K = 20, 32, 2
EPOCH_BATCHES = 5  # DTJS's α: due several times in STEPS


def unlabelled(i: int, y: torch.Tensor) -> torch.Tensor:
    """y with task 1 missing (NaN) on 12 of the first half's 16 rows, or on all of batch i
    when i % 4 == 3."""
    y = y.clone()
    y[:12 if i % 4 != 3 else None, 1] = float("nan")
    return y


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global batch i: x [32, 6], y [32, 2]."""
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(GLOBAL_BATCH, 6, generator=g)
    signal = x @ torch.randn(6, generator=torch.Generator().manual_seed(7))
    half = GLOBAL_BATCH // 2
    task1 = torch.cat([-signal[:half], 3.0 * signal[half:]])
    y = torch.stack([signal, task1], dim=1) + 0.1 * torch.randn(GLOBAL_BATCH, K, generator=g)
    return x, y


def part(tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of a global batch (contiguous, as the data loaders shard)."""
    b = len(tensor) // world
    return tensor[rank * b:(rank + 1) * b]


def tiny() -> Tiny:
    """The model, its two heads starting equal: the tasks' gradients on the shared layer
    then point the way their labels do."""
    torch.manual_seed(0)
    model = Tiny(K)
    model.heads[1].load_state_dict(model.heads[0].state_dict())
    return model


def run(name: str, rank: int, world: int) -> dict:
    model = tiny()
    grouped = {"grouped": {"warmup_steps": 5}} if METHODS[name] == "grouped" else {}
    step = make_step(preset(METHODS[name], **grouped), model, TrainerConfig(lr=1e-2), K, seed=0)
    missing = name.endswith("_missing")

    def labels(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch(i)
        return part(x, rank, world), part(unlabelled(i, y) if missing else y, rank, world)

    def forward_on(i: int):
        x, y = labels(i)
        if not missing:
            return lambda split: Pass((model(x) - y) ** 2)
        w = (~torch.isnan(y)).float()
        return lambda split: Pass((model(x) - torch.nan_to_num(y)) ** 2, weights=w)

    def labelled(i: int) -> torch.Tensor | None:
        return (~torch.isnan(labels(i)[1])).float().sum(0) if missing else None

    losses = [step.train_batch(forward_on(i), dev=forward_on(500 + i), epoch_batches=EPOCH_BATCHES,
                               labelled=labelled(i)).tolist()
              for i in range(STEPS)]
    return {"losses": losses, "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist(),
            "state": _flat(step.state_dict())}


def _flat(value: object) -> list[float]:
    """Every number in a step state, in a fixed order (to compare ranks exactly)."""
    if isinstance(value, torch.Tensor):
        return value.double().reshape(-1).tolist()
    if isinstance(value, dict):
        return [x for key in sorted(value, key=str) for x in _flat(value[key])]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat(v)]
    return [float(value)] if isinstance(value, (int, float, bool)) else []


def main(folder: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {name: run(name, rank, world) for name in METHODS}
    (folder / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
