"""Training-step throughput of a ranker on one device, with its data already there.

What `scripts/gpu_bench.sh` runs on a GPU machine, where only torch, numpy, torchrec and
pydantic are at hand (no polars, no mlflow): MMoE at MTReclib sizes (16 fields, 8
experts of [512, 256], towers [128, 64]) trained with Adam on batches drawn from a pool
of rows held on the device (the loader is an `index_select` of a seeded permutation, so
samples/s includes it), in three modes:

- `eager`: the model as it is; on a GPU this is launch-bound (DESIGN.md: ~13–16 ms a
  step at B = 2048 on an H100), so the other two are the lever;
- `compiled`: `torch.compile` of the model (fused kernels, fewer launches);
- `cudagraphs`: `torch.compile(mode="reduce-overhead")`, which replays the step's
  kernels as CUDA graphs (GPU only).

On the CPU it runs the same code at toy sizes, so CI keeps it working. Writes one JSON
file: device, torch version, and per mode and batch size: samples/s, ms per step.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from mtlrec.models.config import model_config
from mtlrec.models.ranker import MultiTaskRanker

MTRECLIB = {"n_experts": 8, "expert_hidden": [512, 256], "tower_hidden": [128, 64],
            "embedding_grad": "dense"}
FIELDS, DENSE, TASKS = 16, 63, 2
# the synthetic AliExpress cardinalities (features/synth.py), each + the 2 reserved ids
TABLE_ROWS = (1_000_002, 300_002, 100_002, 30_002, 10_002, 3_002, 1_002, 302, 102, 52, 22, 12, 10, 7, 5, 4)
MODES = ("eager", "compiled", "cudagraphs")


def table_sizes(toy: bool = False) -> dict[str, int]:
    rows = (1000,) * FIELDS if toy else TABLE_ROWS
    return {f"categorical_{i + 1}": n for i, n in enumerate(rows)}


def device_rows(n: int, sizes: dict[str, int], device: torch.device, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A pool of random rows on the device: ids [n, F], dense [n, D], labels [n, K]."""
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.stack([torch.randint(0, s, (n,), generator=gen, device=device) for s in sizes.values()], 1)
    dense = torch.randn(n, DENSE, generator=gen, device=device)
    labels = (torch.rand(n, TASKS, generator=gen, device=device) < 0.1).float()
    return ids, dense, labels


def measure(mode: str, batch: int, steps: int, device: torch.device, sizes: dict[str, int],
            arch: str = "mmoe", bf16: bool = False, seed: int = 0) -> dict:
    """samples/s of `steps` training steps of `arch` at MTReclib sizes after warm-up
    (compilation excluded)."""
    torch.manual_seed(seed)
    kw = {k: v for k, v in MTRECLIB.items() if arch == "mmoe" or k != "n_experts"}
    model = MultiTaskRanker(model_config(arch=arch, **kw), sizes, DENSE, TASKS).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    loss_fn = nn.BCEWithLogitsLoss()
    forward = model if mode == "eager" else torch.compile(
        model, mode="reduce-overhead" if mode == "cudagraphs" else None)
    pool = max(4 * batch, 65_536)
    ids, dense, labels = device_rows(pool, sizes, device, seed)

    def step(index: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(ids.index_select(0, index), dense.index_select(0, index))
        loss = loss_fn(logits.float(), labels.index_select(0, index))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    order = torch.randperm(pool, device=device)
    batches = [order[(i * batch) % (pool - batch):][:batch] for i in range(steps + 3)]
    for index in batches[:3]:  # warm-up: compilation, graph capture, allocator
        step(index)
    _sync(device)
    start = time.perf_counter()
    for index in batches[3:]:
        loss = step(index)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"arch": arch, "mode": mode, "batch": batch, "steps": steps, "bf16": bf16,
            "samples_per_s": batch * steps / seconds, "ms_per_step": 1e3 * seconds / steps,
            "final_loss": float(loss)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(device: torch.device, batches: list[int], steps: int, modes: list[str],
        sizes: dict[str, int], archs: tuple[str, ...] = ("mmoe",)) -> dict:
    results = []
    for arch in archs:
        for mode in modes:
            if mode == "cudagraphs" and device.type != "cuda":
                continue
            for batch in batches:
                r = measure(mode, batch, steps, device, sizes, arch)
                print(f"throughput: {device.type} {arch} {mode} B={batch}: {r['samples_per_s']:,.0f} "
                      f"samples/s ({r['ms_per_step']:.2f} ms/step)", flush=True)
                results.append(r)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "torch": torch.__version__, "model": MTRECLIB, "archs": list(archs),
            "table_rows": sum(sizes.values()), "results": results}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[2048, 16384])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--archs", nargs="+", default=["mmoe"], choices=["hps", "mmoe", "ple"])
    p.add_argument("--toy", action="store_true", help="small tables (the CPU check in CI)")
    a = p.parse_args(argv)
    result = run(torch.device(a.device), a.batch, a.steps, a.modes, table_sizes(a.toy), tuple(a.archs))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
