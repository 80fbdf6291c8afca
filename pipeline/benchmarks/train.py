"""`mtlrec bench train`: training samples/s of HPS, MMoE and PLE at realistic sizes.

Synthetic AliExpress-schema logs (16 categorical fields) ingested as usual; the models'
embedding tables are sized by the generator's cardinalities (up to 10^6 rows per field),
embedding dim 16/64/128, batch 2048, loader included (samples/s of the second epoch over
the training split, so start-up is excluded). Also compares the fused single-device
embedding with torchrec's EmbeddingBagCollection. Writes reports/train.json and .md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mtlrec.features.batches import SplitData
from mtlrec.features.folder import FeatureInfo
from mtlrec.features.synth import SynthParams, generate
from mtlrec.features.vocab import FIRST_ID
from mtlrec.models.config import RankerConfig, model_config
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.benchmarks.measure import machine, write_report
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.targets import ingest_logs
from mtlrec.training import throughput
from mtlrec.training.loop import Trainer
from mtlrec.training.config import MethodConfig, TrainerConfig
from mtlrec.training.mtl.step import make_step

ARCHS = ("hps", "mmoe", "ple")
DIMS = (16, 64, 128)


def run(cfg: Config, overrides: list[str]) -> dict:
    work = Path(cfg.paths.work_dir) / "bench" / "train"
    base = [f"paths.work_dir={work}", "synth.days=3", f"synth.rows_per_day={cfg.bench.train_rows}",
            *overrides]
    data_cfg = config_mod.load(base)
    generate(data_cfg.synth, Path(data_cfg.synth.out_dir))
    features = ingest_logs(data_cfg)
    info = features.info()
    full_sizes = {name: card + FIRST_ID for name, card in zip(info.categorical, SynthParams().cardinalities)}
    full_sizes |= {name: info.table_sizes[name] for name in info.multi}  # tags: as ingested
    train, valid = SplitData(features, "train"), SplitData(features, "valid")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    cases = [(a, d, "fused") for a in ARCHS for d in DIMS] + [("mmoe", 16, "torchrec")]
    for device in devices:
        for arch, dim, impl in cases:
            model_cfg = model_config(arch=arch, embedding_dim=dim, embedding_impl=impl)
            speed = _samples_per_s(model_cfg, full_sizes, info, train, valid, device, cfg.seed)
            print(f"bench train: {device} {arch} dim {dim} {impl}: {speed:,.0f} samples/s", file=sys.stderr)
            rows.append({"device": device, "model": arch, "embedding_dim": dim, "embedding": impl,
                         "samples_per_s": speed})
    result = {"machine": machine(), "train_rows": len(train), "batch_size": 2048,
              "table_rows": full_sizes, "runs": rows, "modes": _modes(devices),
              "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    js, md = write_report(Path(cfg.paths.reports), "train", result, _markdown(result))
    print(f"bench train: wrote {js} and {md}")
    return result


def _modes(devices: list[str]) -> list[dict]:
    """Eager vs torch.compile (vs CUDA graphs on a GPU) at MTReclib sizes, data on the device
    (`training.throughput`): MMoE at B = 2048 on the CPU; HPS, MMoE and PLE at B = 2048 and
    16384 on a GPU."""
    out = []
    for device in devices:
        gpu = device == "cuda"
        r = throughput.run(torch.device(device), [2048, 16384] if gpu else [2048], 50 if gpu else 10,
                           list(throughput.MODES), throughput.table_sizes(),
                           ("hps", "mmoe", "ple") if gpu else ("mmoe",))
        out += [x | {"device": r["device"]} for x in r["results"]]
    return out


def _samples_per_s(model_cfg: RankerConfig, sizes: dict[str, int], info: FeatureInfo,
                   train: SplitData, valid: SplitData, device: str, seed: int) -> float:
    torch.manual_seed(seed)
    model = MultiTaskRanker(model_cfg, sizes, len(info.numeric), len(info.tasks), info.pooling)
    trainer_cfg = TrainerConfig(max_epochs=2, batch_size=2048, patience=5, device=device)
    step = make_step(MethodConfig(name="ew"), model, trainer_cfg, len(info.tasks), seed)
    trainer = Trainer(model, step, trainer_cfg, info.tasks, list(range(len(info.tasks))), seed)
    return trainer.fit(train, valid).history[-1]["samples_per_s"]


def _markdown(r: dict) -> str:
    total = sum(r["table_rows"].values())
    lines = ["# Training throughput (`mtlrec bench train`)", "",
             f"Synthetic AliExpress-schema data, 16 categorical fields with {total:,} embedding rows in "
             f"all (largest {max(r['table_rows'].values()):,}), 63 numeric, 2 tasks; batch "
             f"{r['batch_size']}; samples/s of the second epoch over {r['train_rows']:,} training rows, "
             "loader and KeyedJaggedTensor construction included.", "",
             f"Machine: {r['machine']['cpus']} CPUs, torch {r['machine']['torch']}; "
             f"CUDA: {r['cuda_device'] or 'none'}.", "",
             "| device | model | embedding dim | embeddings | samples/s |",
             "| --- | --- | ---: | --- | ---: |"]
    for x in r["runs"]:
        lines.append(f"| {x['device']} | {x['model'].upper()} | {x['embedding_dim']} | {x['embedding']} | "
                     f"{x['samples_per_s']:,.0f} |")
    lines += ["", "## Eager vs compiled (vs CUDA graphs) at MTReclib sizes", "",
              "MMoE/HPS/PLE with experts [512, 256], towers [128, 64], the 16 synthetic tables, "
              "Adam, dense table gradients, data held on the device (`training/throughput.py`).", "",
              "| device | model | mode | batch | samples/s | ms/step |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for x in r.get("modes", []):
        lines.append(f"| {x['device']} | {x['arch'].upper()} | {x['mode']} | {x['batch']} | "
                     f"{x['samples_per_s']:,.0f} | {x['ms_per_step']:.1f} |")
    return "\n".join(lines) + "\n"
