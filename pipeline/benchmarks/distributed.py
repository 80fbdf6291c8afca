"""`mtlrec bench distributed`: 1 vs 2 ranks on this machine, per method, and what a step
sends over the network.

Synthetic AliExpress-schema logs, MMoE (the default model), global batch 256,
`bench.distributed_epochs` epochs. Each method trains four times through `mtlrec train`:
one process (the baseline) and two torchrun ranks, both with the fused tables replicated,
and torchrec's DistributedModelParallel (table-wise) over its EmbeddingBagCollection on one
and on two ranks. Reported per method: the largest difference of the per-epoch train loss and
validation AUC between the 2-rank run and its 1-rank twin (≈ 1e-6: the same steps), the
samples/s of each, and the floats a rank sends per step, counted from the model's
parameter sizes (`volume`). Then, on paper, the same count for MMoE at AliExpress scale
(the synthetic generator's table sizes) on 8 and 64 ranks. Writes
reports/distributed.json and .md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from torch import nn

from mtlrec.features.synth import SynthParams, generate
from mtlrec.features.vocab import FIRST_ID
from mtlrec.models.config import model_config
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.benchmarks.measure import machine, write_report
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.targets import ingest_logs
from mtlrec.progress import Progress

METHODS = ["ew", "pcgrad", "mocograd", "dbmtl", "adatask", "dtjs", "grouped"]
GLOBAL_BATCH = 256
# (label, ranks (0: a plain process), overrides)
DMP = ["model.embedding_impl=torchrec", "trainer.sharding.tables=table_wise"]
LAYOUTS = [("1 process", 0, []), ("2 ranks, replicated", 2, []), ("1 rank, DMP", 1, DMP), ("2 ranks, DMP", 2, DMP)]
FLOAT = 4  # bytes


def run(cfg: Config, overrides: list[str]) -> dict:
    work = Path(cfg.paths.work_dir) / "bench" / "distributed"
    base = [f"paths.work_dir={work}", "synth.days=4", f"synth.rows_per_day={cfg.bench.distributed_rows_per_day}",
            "model.embedding_grad=dense", "trainer.threads=1",
            f"trainer.max_epochs={cfg.bench.distributed_epochs}", "trainer.patience=100", *overrides]
    data_cfg = config_mod.load(base)
    generate(data_cfg.synth, Path(data_cfg.synth.out_dir))
    info = ingest_logs(data_cfg).info()
    runs = []
    with Progress(len(METHODS) * len(LAYOUTS), "runs", "bench distributed") as bar:
        for method in METHODS:
            for label, ranks, extra in LAYOUTS:
                folder = work / "runs" / f"{method}-{label.replace(' ', '').replace(',', '-')}"
                history = _train(ranks, [*base, f"method={method}", *extra, f"paths.run_dir={folder}",
                                         f"trainer.batch_size={GLOBAL_BATCH // max(ranks, 1)}"])
                runs.append({"method": method, "layout": label, "ranks": max(ranks, 1), "history": history})
                bar.update(1)
    model = MultiTaskRanker(data_cfg.model, info.table_sizes, len(info.numeric), 2)  # the fused tables
    result = {"machine": machine(), "global_batch": GLOBAL_BATCH, "epochs": cfg.bench.distributed_epochs,
              "rows_per_day": cfg.bench.distributed_rows_per_day, "runs": runs,
              "agreement": _agreement(runs), "volume_here": volume(model, GLOBAL_BATCH // 2, 2),
              "paper": _paper()}
    js, md = write_report(Path(cfg.paths.reports), "distributed", result, _markdown(result))
    print(f"bench distributed: wrote {js} and {md}")
    return result


def _train(ranks: int, args: list[str]) -> list[dict]:
    """`mtlrec train` as one process (ranks 0) or under torchrun; the run's history."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
                if ranks else [sys.executable])
    proc = subprocess.run([*launcher, "-m", "mtlrec.pipeline.cli", "train", *args, "train.force=true"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench distributed: {' '.join(args[-3:])} failed:\n{proc.stderr[-3000:]}")
    run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("paths.run_dir="))
    return json.loads((Path(run_dir) / "history.json").read_text())["all"]


def _agreement(runs: list[dict]) -> list[dict]:
    """Per method: the 2-rank runs against their 1-rank twins (largest per-epoch difference)."""
    by = {(r["method"], r["layout"]): r["history"] for r in runs}
    out = []
    for method in METHODS:
        row = {"method": method}
        for name, two, one in (("replicated", "2 ranks, replicated", "1 process"),
                               ("dmp", "2 ranks, DMP", "1 rank, DMP")):
            a, b = by[(method, two)], by[(method, one)]
            row[name] = {key: max(abs(x[key] - y[key]) for x, y in zip(a, b, strict=True))
                         for key in ("train_loss", "valid_mean_auc")}
        row["speed"] = {layout: by[(method, layout)][-1]["samples_per_s"] for layout, _, _ in LAYOUTS}
        row["auc"] = {layout: by[(method, layout)][-1]["valid_mean_auc"] for layout, _, _ in LAYOUTS}
        out.append(row)
    return out


def volume(model: MultiTaskRanker, local_batch: int, ranks: int) -> dict:
    """Floats a rank sends per step (ring all-reduce: 2(N−1)/N × size; all-to-all: the
    (N−1)/N of its pooled lookups that other ranks own, forward and backward).
    Loss-level methods (EW) all-reduce the dense gradient D; gradient-level ones the K×D_θ
    task rows of the shared parameters θ plus the rest once. Replicated tables add their
    whole (dense) gradient; DMP's table-wise tables instead send the pooled lookups."""
    def size(params: list[nn.Parameter]) -> int:
        return sum(p.numel() for p in params)

    k = model.n_tasks
    tables = size(list(model.embeddings.parameters()))
    dense = size(list(model.parameters())) - tables
    shared = size(model.shared_parameters(include_embeddings=False))
    ring = 2 * (ranks - 1) / ranks
    lookups = local_batch * len(model.embeddings.configs) * model.cfg.embedding_dim
    all_to_all = 2 * lookups * (ranks - 1) / ranks
    ew, grad = ring * dense, ring * (k * shared + dense - shared)
    return {"ranks": ranks, "local_batch": local_batch, "tasks": k, "dense_params": dense,
            "shared_params": shared, "table_params": tables,
            "floats_per_step": {"EW, replicated": ew + ring * tables, "gradient-level, replicated": grad + ring * tables,
                                "EW, DMP": ew + all_to_all, "gradient-level, DMP": grad + all_to_all}}


def _paper() -> list[dict]:
    """MMoE (8 experts of [128], towers [64], dim 16) on AliExpress-scale tables (the synthetic
    generator's cardinalities, 16 fields up to 10^6 rows), 2048 rows per rank."""
    sizes = {f"c{i}": card + FIRST_ID for i, card in enumerate(SynthParams().cardinalities)}
    model = MultiTaskRanker(model_config(arch="mmoe"), sizes, 63, 2)
    return [volume(model, 2048, n) for n in (8, 64)]


def _mb(floats: float) -> str:
    return f"{floats * FLOAT / 2**20:,.2f}"


def _markdown(r: dict) -> str:
    lines = [
        "# Distributed training: 1 vs 2 ranks, and what a step sends", "",
        f"Command: `mtlrec bench distributed` · machine: {r['machine']['cpus']} CPUs, torch "
        f"{r['machine']['torch']}, gloo · synthetic logs, {r['rows_per_day']:,} rows/day × 4 days, MMoE "
        f"(dense table gradients), global batch {r['global_batch']}, {r['epochs']} epochs, seed 0. "
        "DMP: torchrec's DistributedModelParallel, table-wise, fused row-wise Adagrad on the tables "
        "(the other layouts train the tables with Adam, so their AUC differs from DMP's).", "",
        "## Same steps on 2 ranks as on 1", "",
        "Largest per-epoch |difference| of the 2-rank run against its 1-rank twin (global batch equal).", "",
        "| method | replicated: train loss | replicated: valid AUC | DMP: train loss | DMP: valid AUC "
        "| AUC 1 process | AUC DMP | samples/s: 1 process / 2 ranks / 1 rank DMP / 2 ranks DMP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in r["agreement"]:
        s = a["speed"]
        lines.append(
            f"| {a['method']} | {a['replicated']['train_loss']:.1e} | {a['replicated']['valid_mean_auc']:.1e} "
            f"| {a['dmp']['train_loss']:.1e} | {a['dmp']['valid_mean_auc']:.1e} | {a['auc']['1 process']:.4f} "
            f"| {a['auc']['2 ranks, DMP']:.4f} | " + " / ".join(f"{s[layout]:,.0f}" for layout, _, _ in LAYOUTS) + " |")
    v = r["volume_here"]
    lines += ["", "Two ranks on one 2-core machine share the cores (and gloo copies through the kernel), "
              "so samples/s here say nothing of scaling; the volumes below do.", "",
              "## What a rank sends per step", "",
              f"This run's model: D = {v['dense_params']:,} dense parameters, of which θ = {v['shared_params']:,} "
              f"shared by both tasks; tables {v['table_params']:,} floats; K = {v['tasks']}.", ""]
    lines += _volume_table([v])
    lines += ["", "## On paper: MMoE at AliExpress scale", "",
              "MMoE (8 experts of [128], towers [64], embedding dim 16), 16 tables of the synthetic "
              "generator's AliExpress-like cardinalities, 63 dense features, K = 2, 2048 rows per rank. "
              "Ring all-reduce sends 2(N−1)/N × the gradient; DMP's all-to-all sends the (N−1)/N of a "
              "rank's pooled lookups that other ranks own, forward and backward.", ""]
    lines += _volume_table(r["paper"])
    p8 = r["paper"][0]
    f8 = p8["floats_per_step"]
    dense_ratio = (p8["tasks"] * p8["shared_params"] + p8["dense_params"] - p8["shared_params"]) / p8["dense_params"]
    lines += ["", f"The paper model: D = {p8['dense_params']:,} dense parameters, θ = {p8['shared_params']:,} "
              f"shared, tables {p8['table_params']:,} floats.", "",
              "What it implies: a gradient-level method all-reduces K×θ + (D − θ) floats instead of "
              f"EW's D, {dense_ratio:.2f}× the dense traffic here (θ is most of D in MMoE, so close to "
              f"K×); with DMP's all-to-all added a step sends {f8['gradient-level, DMP'] / f8['EW, DMP']:.2f}× "
              "EW's. Both are small next to replicated tables, whose dense gradient is every table's "
              f"size each step ({f8['EW, replicated'] / f8['EW, DMP']:.0f}× EW with DMP at 8 ranks): "
              "sharding the tables, not the choice of method, decides whether training scales. The "
              "all-to-all grows with the batch, not the tables, and a ring all-reduce sends nearly the "
              "same per rank whatever N, so the per-rank volume is flat from 8 to 64 ranks; the step "
              "time then depends on latency (2(N−1) ring hops) more than on bandwidth, and K× more "
              "floats in the same all-reduce does not add hops. With K = 8 tasks the dense traffic "
              "would be ≈ 8× EW's, still below one replicated table set."]
    return "\n".join(lines) + "\n"


def _volume_table(volumes: list[dict]) -> list[str]:
    keys = list(volumes[0]["floats_per_step"])
    lines = ["| ranks | rows/rank | " + " | ".join(f"{k} (MB)" for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for v in volumes:
        lines.append(f"| {v['ranks']} | {v['local_batch']:,} | "
                     + " | ".join(_mb(v["floats_per_step"][k]) for k in keys) + " |")
    return lines
