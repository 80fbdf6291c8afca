"""`mtlrec <stage> [key=value ...]`: the command line.

Overrides are Hydra-style (`data=census`, `trainer.max_epochs=3`, `data.source.train=…`).
User mistakes (config, data) print one clear message and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from mtlrec.features.errors import DataError, shorten
from mtlrec.pipeline import config as config_mod

# `mtlrec bench <name>` → module under pipeline/benchmarks/ (each has run(cfg, overrides))
BENCHES = {"ingest": "ingest", "census": "census", "census_methods": "census_methods",
           "methods": "methods", "adatask": "adatask_synthetic", "train": "train", "serve": "serve",
           "multimnist": "multimnist", "qm9": "qm9", "qm9_steps": "qm9_steps", "scale": "scale",
           "conflict": "conflict", "dtjs_alpha": "dtjs_alpha", "distributed": "distributed"}


@dataclass(frozen=True)
class Stage:
    module: str  # under mtlrec.pipeline; imported only when the stage runs (see STAGES)
    function: str
    help: str


# Each stage's module is imported when that stage runs: `stages` brings the training stack
# (torch, torchrec, mlflow: ≈7 s and 650 MB to import), which `mtlrec config` and the
# serving stages must not pay.
STAGES = {
    "synth": Stage("stages", "run_synth", "generate synthetic AliExpress-schema logs (one file per day)"),
    "ingest": Stage("stages", "run_ingest",
                    "validate, quarantine, fit vocabularies/statistics, write model-ready Parquet"),
    "train": Stage("stages", "run_train",
                   "train a model on ingested data (tracked in MLflow; resumes after a crash)"),
    "evaluate": Stage("stages", "run_evaluate",
                      "test-split metrics, per-group AUC, delta-m% vs STL, report with plots; "
                      "with model=models:/… logs=…: the served model on new raw logs"),
    "export": Stage("stages", "run_export",
                    "ONNX bundle + parity check -> MLflow registry -> gate vs champion -> aliases"),
    "promote": Stage("stages", "run_promote",
                     "make a version (default: the challenger) the champion: `promote version=N`"),
    "rollback": Stage("stages", "run_rollback", "move the champion back to the previous one"),
    "serve": Stage("serving_stages", "run_serve",
                   "HTTP server over onnxruntime: `serve model=models:/<name>@champion`"),
    "score": Stage("serving_stages", "run_score", "batch scoring Parquet -> Parquet: `score input=… output=…`"),
    "retrain": Stage("stages", "run_retrain", "ingest new day partitions once, judge their drift, "
                     "train warm-started, gate, promote"),
    "drift": Stage("monitor", "run_drift", "a day's drift vs the day before and the champion's "
                   "training window: `drift day=2026-11-05`"),
    "skew": Stage("monitor", "run_skew", "train/serve skew: the served-row log vs the served model's "
                  "training window"),
    "run": Stage("stages", "run_main_job",
                 "the main job: synthetic logs -> ingest -> train -> evaluate -> export -> champion"),
}
# Commands the CLI answers itself.
BUILTINS = {"config": "print the resolved configuration",
            "bench": "benchmarks: `mtlrec bench " + "|".join(BENCHES) + "`",
            "sweep": "a config grid chosen on validation, the winner tested at several seeds: "
                     "`mtlrec sweep <conf/sweep name|file.yaml> [overrides]`"}
# Short forms of config keys, per stage (`mtlrec score input=a.parquet` = `score.input=…`).
SHORT_KEYS = {
    "evaluate": {"logs": "evaluate.logs"},
    "promote": {"version": "registry.version"},
    "score": {"input": "score.input", "output": "score.output"},
    "drift": {"day": "monitor.day"},
}
MODEL_STAGES = ("evaluate", "serve", "score", "skew")  # where model=<URI or folder> names a served model


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
        epilog="stages:\n" + "\n".join(f"  {k:8s} {v}" for k, v in _help().items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                        help=f"a folder of your own data/, model/, method/ YAML files, searched "
                             f"before the package's (repeatable; also ${config_mod.CONFIG_DIR_ENV})")
    parser.add_argument("stage", choices=sorted(_help()), metavar="stage")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data=census")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: rank 0 reports, the others warn
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="[mtlrec] %(message)s" if rank == 0 else f"[mtlrec rank {rank}] %(message)s")
    logging.getLogger("mtlrec").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    overrides = expand(args.stage, list(args.overrides))
    try:
        with _config_dirs(args.config_dir):
            _run(args.stage, overrides)
    except (config_mod.ConfigError, DataError) as exc:
        print(f"mtlrec {args.stage}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file vanished, a disk filled up, a folder is not writable
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"mtlrec {args.stage}: error: {one_line(exc.strerror or str(exc))}{where}", file=sys.stderr)
        return 2
    return 0


def one_line(message: str) -> str:
    """A user-facing error as one line, capped like every DataError: a long echoed value or
    list must not bury what the error says."""
    return shorten(" ".join(message.split()))


@contextlib.contextmanager
def _config_dirs(dirs: list[str]) -> Iterator[None]:
    """--config-dir, passed on through $MTLREC_CONFIG_DIR so that every `config.load` of the
    command sees it (benchmark workers too); put back afterwards."""
    if not dirs:
        yield
        return
    before = os.environ.get(config_mod.CONFIG_DIR_ENV)
    folders = config_mod.user_config_dirs(dirs)
    os.environ[config_mod.CONFIG_DIR_ENV] = os.pathsep.join(map(str, folders))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(config_mod.CONFIG_DIR_ENV, None)
        else:
            os.environ[config_mod.CONFIG_DIR_ENV] = before


def _run(stage_name: str, overrides: list[str]) -> None:
    if stage_name == "bench":
        if not overrides or overrides[0] not in BENCHES:
            raise config_mod.ConfigError(f"mtlrec bench needs one of {list(BENCHES)}")
        target, rest = overrides[0], overrides[1:]
        module = importlib.import_module(f"mtlrec.pipeline.benchmarks.{BENCHES[target]}")
        # a benchmark's own setting first, so overrides of its data keys validate
        module.run(config_mod.load([*getattr(module, "SETTING", []), *rest]), rest)
        return
    if stage_name == "sweep":
        if not overrides or "=" in overrides[0]:
            raise config_mod.ConfigError("mtlrec sweep needs a sweep: a name under conf/sweep/ "
                                         "or a .yaml file, then any overrides")
        importlib.import_module("mtlrec.pipeline.sweep").run(overrides[0], overrides[1:])
        return
    cfg = config_mod.load(overrides)
    if stage_name == "config":
        print(config_mod.to_yaml(cfg), end="")
        return
    stage = STAGES[stage_name]
    getattr(importlib.import_module(f"mtlrec.pipeline.{stage.module}"), stage.function)(cfg)


def _help() -> dict[str, str]:
    return {name: stage.help for name, stage in STAGES.items()} | BUILTINS


def cli() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
