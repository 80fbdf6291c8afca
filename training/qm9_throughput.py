"""A QM9 run that fits the GPU machine's few minutes: the MPNN at K = 11 with EW and with
methods that need per-task gradients, on the same molecules, through the same trainer.

What `scripts/gpu_bench.sh` runs after the ranker throughput, where only torch, numpy,
pyarrow, torch-geometric and pydantic are at hand (no polars, no mlflow: the QM9 Parquet
file is read with pyarrow). Per method: training molecules/s, the epoch time against EW's
in the same process, and the validation MAE per target (in the papers' units) after a
fixed number of epochs on the first `--train` molecules. The methods are the cases of
`mtlrec bench qm9_steps` that matter on a GPU: EW, PCGrad on the shared representation
(one encoder backward) and on the shared parameters (11 backward passes), and DB-MTL (its
gradient EMA needs the shared parameters). Writes one JSON file. On the CPU `--toy` runs
a few hundred molecules for one epoch, so CI keeps it working.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mtlrec.features.qm9 import TARGETS, load_qm9
from mtlrec.features.qm9_graphs import EDGE_FEATURES, NODE_FEATURES, GraphSplit, QM9Graphs
from mtlrec.models.mpnn import MPNN
from mtlrec.training.config import MethodConfig, TrainerConfig
from mtlrec.training.loop import Trainer, pick_device, seed_everything
from mtlrec.training.mtl.step import make_step
from mtlrec.training.tasks import TaskSet, qm9_tasks

METHODS = {
    "ew": MethodConfig(name="ew", diagnostics_every=0),
    "pcgrad on the representation": MethodConfig(name="pcgrad", aggregate="pcgrad", grad_on="representation",
                                                 diagnostics_every=0),
    "pcgrad on the shared parameters": MethodConfig(name="pcgrad", aggregate="pcgrad", diagnostics_every=0),
    "dbmtl": MethodConfig(name="dbmtl", loss="log", aggregate="dbmtl", diagnostics_every=0),
}


def run_method(label: str, train: GraphSplit, valid: GraphSplit, kind: TaskSet, epochs: int,
               batch: int, hidden: int, seed: int) -> dict:
    """One model trained from the same seed on the same molecules; its speed and MAE."""
    seed_everything(seed)
    model = MPNN(len(NODE_FEATURES), len(EDGE_FEATURES), n_tasks=len(TARGETS), hidden=hidden)
    cfg = TrainerConfig(max_epochs=epochs, batch_size=batch, patience=epochs, checkpoint_minutes=0.0)
    step = make_step(METHODS[label], model.to(pick_device(cfg.device)), cfg, len(TARGETS), seed)
    trainer = Trainer(model, step, cfg, [t.name for t in TARGETS], list(range(len(TARGETS))), seed,
                      kind=kind, eval_batch_size=512)
    start = time.perf_counter()
    result = trainer.fit(train, valid)
    return {"method": label, "seconds": time.perf_counter() - start, "epochs": result.epochs_run,
            "molecules_per_s": result.samples_per_s, "best_valid_score": result.best_valid_score,
            "last_epoch": result.history[-1]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="qm9.parquet")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=20_000, help="training molecules (the split's first)")
    ap.add_argument("--valid", type=int, default=2_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--toy", action="store_true", help="300 / 100 molecules, one epoch, hidden 16 (CPU check)")
    args = ap.parse_args(argv)
    if args.toy:
        args.train, args.valid, args.epochs, args.hidden = 300, 100, 1, 16
    qm9 = load_qm9(args.data, limit=max(args.train, args.valid))
    kind = qm9_tasks(TARGETS, qm9.stats.std)
    train, valid = (GraphSplit(QM9Graphs(qm9.splits[name], bonds_only=True), n)
                    for name, n in (("train", args.train), ("valid", args.valid)))
    for split in (train, valid):  # every graph built once, before any timing: all methods alike
        split.batch(torch.arange(len(split)))
    warm = GraphSplit(train.graphs, args.batch)  # first calls (kernels, allocator) untimed
    run_method("ew", warm, warm, kind, 1, args.batch, args.hidden, 0)
    runs = []
    for label in args.methods:
        runs.append(run_method(label, train, valid, kind, args.epochs, args.batch, args.hidden, 0))
        print(f"qm9 {label}: {runs[-1]['molecules_per_s']:,.0f} molecules/s, "
              f"valid score {runs[-1]['best_valid_score']:.4f}", flush=True)
    ew = next((r for r in runs if r["method"] == "ew"), None)
    for r in runs:
        r["time_vs_ew"] = None if ew is None else ew["molecules_per_s"] / r["molecules_per_s"]
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
              "torch": torch.__version__, "setting": {k: v for k, v in vars(args).items() if k not in ("data", "out")},
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
