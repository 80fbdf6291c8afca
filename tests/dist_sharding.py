"""The run tests/test_distributed_sharding.py launches with torchrun: a small MMoE ranker
whose embedding tables torchrec's DistributedModelParallel shards (`argv[2]`: a sharding
type) trains for dist_methods.STEPS steps with each method of `argv[3:]`, on this rank's
part of every global batch (gloo, CPU); each rank writes its per-step losses and final
whole parameters (the shards gathered) to <folder>/rank<r>.json.

The data: as in dist_methods, task 1's targets pull against task 0's in the first half
of every batch (rank 0's part, with two ranks) and with it, three times as hard, in the
second: the ranks' local task gradients conflict, the global ones do not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torchrec import KeyedJaggedTensor

from dist_methods import EPOCH_BATCHES, K, METHODS, STEPS, part
from helpers import preset
from mtlrec.models.config import MMoEConfig
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.training.config import ShardingConfig, TrainerConfig
from mtlrec.training.mtl.step import make_step
from mtlrec.training.sharding import ShardedRanker
from mtlrec.training.step import Pass

TABLES = {"a": 40, "b": 25, "c": 12}
GLOBAL_BATCH = 32


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global batch i: ids [32, 3], dense [32, 3], targets [32, 2]."""
    g = torch.Generator().manual_seed(2000 + i)
    ids = torch.stack([torch.randint(size, (GLOBAL_BATCH,), generator=g) for size in TABLES.values()], dim=1)
    dense = torch.randn(GLOBAL_BATCH, 3, generator=g)
    signal = dense @ torch.tensor([1.0, -0.5, 0.25]) + (ids[:, 0] % 5 - 2).float() / 2
    half = GLOBAL_BATCH // 2
    task1 = torch.cat([-signal[:half], 3.0 * signal[half:]])
    y = torch.stack([signal, task1], dim=1) + 0.1 * torch.randn(GLOBAL_BATCH, K, generator=g)
    return ids, dense, y


def ranker() -> MultiTaskRanker:
    """Seeded alike on every rank; the towers start equal, so the tasks' gradients on the
    shared layers point the way their targets do."""
    torch.manual_seed(0)
    cfg = MMoEConfig(arch="mmoe", embedding_impl="torchrec", embedding_dim=4, expert_hidden=[8],
                     tower_hidden=[4], n_experts=2, dropout=0.0)
    model = MultiTaskRanker(cfg, TABLES, 3, K)
    model.towers[1].load_state_dict(model.towers[0].state_dict())
    return model


def kjt(ids: torch.Tensor) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(keys=list(TABLES), values=ids.t().reshape(-1),
                             lengths=torch.ones(ids.numel(), dtype=torch.int32))


def run(name: str, tables: str, rank: int, world: int) -> dict:
    """SGD on the tables: its step is proportional to the gradient, so a gradient scaled by
    the world size (torchrec's default division) shows; Adagrad's would not."""
    model = ShardedRanker(ranker(), ShardingConfig(tables=tables, optimizer="sgd", lr=0.2), torch.device("cpu"))
    method = preset(METHODS[name], **({"grouped": {"warmup_steps": 5}} if name == "grouped" else {}))
    step = make_step(method, model, TrainerConfig(lr=1e-2), K, seed=0)

    def forward_on(i: int):
        ids, dense, y = (part(t, rank, world) for t in batch(i))
        return lambda split: Pass((model(kjt(ids), dense) - y) ** 2)

    losses = [step.train_batch(forward_on(i), dev=forward_on(500 + i), epoch_batches=EPOCH_BATCHES).tolist()
              for i in range(STEPS)]
    weights, start = model.state_dict(), ranker().state_dict()
    tables = [k for k in weights if "embedding_bags" in k]
    return {"losses": losses, "params": torch.cat([weights[k].reshape(-1) for k in sorted(weights)]).tolist(),
            "table_change": max(float((weights[k] - start[k]).abs().max()) for k in tables)}


def main(folder: Path, tables: str, methods: list[str]) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {name: run(name, tables, rank, world) for name in methods}
    (folder / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
