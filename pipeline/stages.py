"""Pipeline stages: each takes the typed config, reads and writes files, and can run alone."""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

from mtlrec.features.ingest import IngestOutput, ingest
from mtlrec.features.synth import SynthParams, generate
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.progress import Progress

log = logging.getLogger(__name__)


def synth_params(cfg: Config, **changes) -> SynthParams:
    known = {f.name for f in fields(SynthParams)}
    values = {k: v for k, v in cfg.synth.model_dump().items() if k in known}
    return SynthParams(**(values | changes))


def run_synth(cfg: Config) -> list[Path]:
    """Write synthetic AliExpress-schema logs, one file per day, into synth.out_dir."""
    params = synth_params(cfg)
    total = params.days * params.rows_per_day
    with Progress(total, "synth rows") as bar:
        paths = generate(params, Path(cfg.synth.out_dir), progress=bar.update)
    log.info("synth: %d day files in %s", len(paths), cfg.synth.out_dir)
    return paths


def run_ingest(cfg: Config) -> IngestOutput:
    """Validate, quarantine, fit and transform `data` into paths.features."""
    out = ingest(cfg.data, Path(cfg.paths.features), cfg.ingest,
                 resolved_config=config_mod.to_yaml(cfg))
    m = out.manifest
    print(
        f"ingest {cfg.data.name}: {m['rows_read']:,} rows read, {m['rows_good']:,} good, "
        f"{m['rows_quarantined']:,} quarantined -> {out.folder}"
    )
    if m["rows_quarantined"]:
        print(f"  quarantine reasons: {m['quarantine_reasons']}")
    return out


def run_train(cfg: Config) -> None:
    from mtlrec.pipeline.train import run_train as train

    trained = train(cfg)
    for group, r in trained.results.items():
        print(f"train {group}: best validation mean AUC {r.best_valid_auc:.4f} at epoch "
              f"{r.best_epoch} ({r.epochs_run} epochs, {r.samples_per_s:,.0f} samples/s)")
    print(f"  run folder: {trained.folder}  (MLflow run {trained.run_id})")


def run_evaluate(cfg: Config) -> dict:
    from mtlrec.pipeline.evaluate import run_evaluate as evaluate

    metrics = evaluate(cfg)
    aucs = ", ".join(f"{t} {m['auc']:.4f}" for t, m in metrics["tasks"].items())
    print(f"evaluate: test AUC {aucs}; mean {metrics['mean_auc']:.4f}")
    print(f"  report: {Path(cfg.paths.run_dir) / 'evaluation' / 'report.md'}")
    return metrics


def run_main_job(cfg: Config) -> None:
    """Synthetic logs → ingest → train → evaluate (export and registry come with serving)."""
    run_synth(cfg)
    run_ingest(cfg)
    if (Path(cfg.paths.run_dir) / "run.json").exists() and not cfg.train.force:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"force": True})})
    run_train(cfg)
    run_evaluate(cfg)
    from mtlrec.pipeline.tracking import tracking_uri

    print(f"open the MLflow UI: mlflow ui --backend-store-uri {tracking_uri(cfg.paths.work_dir)}")
