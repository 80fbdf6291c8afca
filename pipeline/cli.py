"""`mtlrec <stage> [key=value ...]`: the command line.

Overrides are Hydra-style (`data=census`, `trainer.max_epochs=3`, `data.source.train=…`).
User mistakes (config, data) print one clear message and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys

from mtlrec.features.errors import DataError
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline import stages

# `mtlrec bench <name>` → module under pipeline/benchmarks/ (each has run(cfg, overrides))
BENCHES = {"ingest": "ingest", "census": "census", "census_methods": "census_methods",
           "methods": "methods", "adatask": "adatask_synthetic", "train": "train", "serve": "serve",
           "multimnist": "multimnist", "qm9": "qm9"}
STAGES = {
    "config": "print the resolved configuration",
    "synth": "generate synthetic AliExpress-schema logs (one file per day)",
    "ingest": "validate, quarantine, fit vocabularies/statistics, write model-ready Parquet",
    "train": "train a model on ingested data (tracked in MLflow; resumes after a crash)",
    "evaluate": "test-split metrics, per-group AUC, delta-m% vs STL, report with plots; "
                "with model=models:/… logs=…: the served model on new raw logs",
    "export": "ONNX bundle + parity check -> MLflow registry -> gate vs champion -> aliases",
    "promote": "make a version (default: the challenger) the champion: `promote version=N`",
    "rollback": "move the champion back to the previous one",
    "serve": "HTTP server over onnxruntime: `serve model=models:/<name>@champion`",
    "score": "batch scoring Parquet -> Parquet: `score input=… output=…`",
    "retrain": "ingest new day partitions once, train warm-started, gate, promote",
    "run": "the main job: synthetic logs -> ingest -> train -> evaluate -> export -> champion",
    "bench": "benchmarks: `mtlrec bench " + "|".join(BENCHES) + "`",
}
# Short forms of config keys, per stage (`mtlrec score input=a.parquet` = `score.input=…`).
SHORT_KEYS = {
    "evaluate": {"logs": "evaluate.logs"},
    "promote": {"version": "registry.version"},
    "score": {"input": "score.input", "output": "score.output"},
}
# each stage's function in stages.py (`config` prints instead)
RUNNERS = {"synth": stages.run_synth, "ingest": stages.run_ingest, "train": stages.run_train,
           "evaluate": stages.run_evaluate, "export": stages.run_export,
           "promote": stages.run_promote, "rollback": stages.run_rollback,
           "serve": stages.run_serve, "score": stages.run_score, "retrain": stages.run_retrain,
           "run": stages.run_main_job}
MODEL_STAGES = ("evaluate", "serve", "score")  # where model=<URI or folder> names a served model


def expand(stage: str, overrides: list[str]) -> list[str]:
    """Stage short forms → config keys. `model=` stays the model group (model=mmoe) unless
    its value is a registry URI or a path, which names the served model (serve.model).
    Their values are quoted for Hydra, so paths like `…/day=2026-11-05.csv` pass as is."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and stage in MODEL_STAGES and key == "model" and ("/" in value or ":" in value):
            key = "serve.model"
        short = SHORT_KEYS.get(stage, {}).get(key, key if key == "serve.model" else None)
        out.append(f"{short}={_quoted(value)}" if sep and short else item)
    return out


def _quoted(value: str) -> str:
    if value[:1] in "'\"" or re.fullmatch(r"[\w./:@*-]*", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mtlrec",
        description="Multi-task ranking pipeline.",
        epilog="stages:\n" + "\n".join(f"  {k:8s} {v}" for k, v in STAGES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stage", choices=sorted(STAGES), metavar="stage")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data=census")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[mtlrec] %(message)s", stream=sys.stderr)
    logging.getLogger("mtlrec").setLevel(logging.INFO)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    overrides = expand(args.stage, list(args.overrides))
    try:
        if args.stage == "bench":
            if not overrides or overrides[0] not in BENCHES:
                raise config_mod.ConfigError(f"mtlrec bench needs one of {list(BENCHES)}")
            target, rest = overrides[0], overrides[1:]
            module = importlib.import_module(f"mtlrec.pipeline.benchmarks.{BENCHES[target]}")
            # a benchmark's own setting first, so overrides of its data keys validate
            module.run(config_mod.load([*getattr(module, "SETTING", []), *rest]), rest)
            return 0
        cfg = config_mod.load(overrides)
        if args.stage == "config":
            print(config_mod.to_yaml(cfg), end="")
        else:
            RUNNERS[args.stage](cfg)
    except (config_mod.ConfigError, DataError) as exc:
        print(f"mtlrec {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
