"""`mtlrec <stage> [key=value ...]`: the command line.

Overrides are Hydra-style (`data=census`, `trainer.max_epochs=3`, `data.source.train=…`).
User mistakes (config, data) print one clear message and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mtlrec.features.errors import DataError
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline import stages

STAGES = {
    "config": "print the resolved configuration",
    "synth": "generate synthetic AliExpress-schema logs (one file per day)",
    "ingest": "validate, quarantine, fit vocabularies/statistics, write model-ready Parquet",
    "train": "train a model on ingested data (tracked in MLflow; resumes after a crash)",
    "evaluate": "test-split metrics, per-group AUC, delta-m% vs STL, report with plots",
    "run": "the main job: synthetic logs -> ingest -> train -> evaluate",
    "bench": "benchmarks: `mtlrec bench ingest|census|train`",
}
BENCHES = ("ingest", "census", "train")


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
    overrides = list(args.overrides)
    try:
        if args.stage == "bench":
            if not overrides or overrides[0] not in BENCHES:
                raise config_mod.ConfigError(f"mtlrec bench needs one of {list(BENCHES)}")
            target, rest = overrides[0], overrides[1:]
            if target == "ingest":
                from mtlrec.pipeline.benchmarks import ingest as bench_ingest

                bench_ingest.run(config_mod.load(rest))
            elif target == "census":
                from mtlrec.pipeline.benchmarks import census as bench_census

                bench_census.run(config_mod.load(rest), rest)
            else:
                from mtlrec.pipeline.benchmarks import train as bench_train

                bench_train.run(config_mod.load(rest), rest)
            return 0
        cfg = config_mod.load(overrides)
        if args.stage == "config":
            print(config_mod.to_yaml(cfg), end="")
        elif args.stage == "synth":
            stages.run_synth(cfg)
        elif args.stage == "ingest":
            stages.run_ingest(cfg)
        elif args.stage == "train":
            stages.run_train(cfg)
        elif args.stage == "evaluate":
            stages.run_evaluate(cfg)
        elif args.stage == "run":
            stages.run_main_job(cfg)
    except (config_mod.ConfigError, DataError) as exc:
        print(f"mtlrec {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
