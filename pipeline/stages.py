"""Pipeline stages: each takes the typed config, reads and writes files, and can run alone."""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path

from mtlrec.features.errors import DataError
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


def run_ingest(cfg: Config) -> IngestOutput | None:
    """Validate, quarantine, fit and transform `data` into paths.features. A benchmark data
    set (multimnist, qm9) is only built and checked: training reads it directly."""
    if cfg.data.kind != "logs":
        from mtlrec.pipeline.targets import SPLITS, load_target

        target = load_target(cfg)
        sizes = ", ".join(f"{name} {len(target.split(name)):,}" for name in SPLITS)
        print(f"ingest {cfg.data.name}: {sizes} examples; tasks {', '.join(target.tasks)} "
              f"(no model-ready files: `mtlrec train data={cfg.data.name}` reads it directly)")
        return None
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
        print(f"train {group}: best validation {trained.score_name} {r.best_valid_score:.4f} at epoch "
              f"{r.best_epoch} ({r.epochs_run} epochs, {r.samples_per_s:,.0f} samples/s)")
    print(f"  run folder: {trained.folder}  (MLflow run {trained.run_id})")


def run_evaluate(cfg: Config) -> dict:
    if cfg.evaluate.logs:
        return run_evaluate_served(cfg)
    from mtlrec.pipeline.evaluate import run_evaluate as evaluate

    metrics = evaluate(cfg)
    metric = metrics["metric"]
    values = ", ".join(f"{t} {m[metric]:.4g}" for t, m in metrics["tasks"].items())
    delta = f"; Δm% {metrics['delta_m_pct']:+.3f}" if "delta_m_pct" in metrics else ""
    print(f"evaluate: test {metric} {values}; mean {metrics[f'mean_{metric}']:.4f}{delta}")
    print(f"  report: {Path(cfg.paths.run_dir) / 'evaluation' / 'report.md'}")
    return metrics


def run_export(cfg: Config) -> dict:
    """Export the trained run, register it, gate it against the champion, move aliases."""
    logs_only(cfg, "export")
    from mtlrec.pipeline.export import GATE_DIR, holdout_pattern, publish

    summary = publish(cfg, Path(cfg.paths.run_dir), holdout_pattern(cfg))
    print(f"export: {cfg.registry.model_name} version {summary['version']} -> {summary['action']}")
    if summary["gate"] and summary["gate"]["failures"]:
        print("  gate failed: " + "; ".join(summary["gate"]["failures"]))
    if summary["action"] != "already champion":
        print(f"  gate report: {Path(cfg.paths.run_dir) / GATE_DIR / 'gate.md'}")
    return summary


def run_promote(cfg: Config) -> None:
    """Make `registry.version` (default: the challenger) the champion, without the gate."""
    from mtlrec.pipeline import registry

    c, name = registry.client(cfg), cfg.registry.model_name
    version = cfg.registry.version
    if version is None:
        challenger = registry.alias_version(c, name, registry.CHALLENGER)
        if challenger is None:
            raise DataError(f"{name} has no challenger: say which version, e.g. `mtlrec promote version=3`")
        version = challenger.version
    old = registry.make_champion(c, name, str(version))
    print(f"promote: {name} champion is version {version}" + (f" (previous: {old})" if old else ""))


def run_rollback(cfg: Config) -> None:
    from mtlrec.pipeline import registry

    before, after = registry.rollback(registry.client(cfg), cfg.registry.model_name)
    print(f"rollback: {cfg.registry.model_name} champion {before} -> {after}")


def model_source(cfg: Config):
    """The `serve.model` to serve/score/evaluate: a registry URI or a bundle folder."""
    from mtlrec.pipeline.registry import cache_dir
    from mtlrec.pipeline.tracking import tracking_uri
    from mtlrec.serving.source import Source

    return Source(cfg.serve.model, tracking_uri(cfg.paths.work_dir), cache_dir(cfg))


def load_served(cfg: Config):
    """(version, verified bundle) that `serve.model` points at now."""
    from mtlrec.serving import bundle

    source = model_source(cfg)
    version = source.version()
    return version, bundle.load(source.fetch(version), threads=0)


def run_serve(cfg: Config) -> None:
    from mtlrec.serving.app import Settings, run

    s = cfg.serve
    settings = Settings(max_rows=s.max_rows, max_body_bytes=int(s.max_body_mb * 2**20),
                        poll_seconds=s.poll_seconds, threads=s.threads)
    print(f"serve: {s.model} on http://{s.host}:{s.port} (POST /predict, GET /health /ready /metrics)",
          flush=True)
    run(model_source(cfg), settings, s.host, s.port)


def run_score(cfg: Config) -> dict:
    from mtlrec.serving.score import score_parquet

    if not cfg.score.input or not cfg.score.output:
        raise config_mod.ConfigError("mtlrec score needs input=<Parquet file or glob> and output=<file>")
    version, model = load_served(cfg)
    result = score_parquet(model, cfg.score.input, Path(cfg.score.output), cfg.score.id_column,
                           cfg.score.chunk_rows)
    print(f"score: {result['rows']:,} rows scored by {cfg.serve.model} (version {version}) -> "
          f"{result['output']}")
    return result


def run_evaluate_served(cfg: Config) -> dict:
    """AUC/logloss of the served model on new raw logs (`evaluate.logs`)."""
    from mtlrec.features import raw
    from mtlrec.pipeline.evaluate import served_metrics

    version, model = load_served(cfg)
    metrics = served_metrics(model, raw.read(model.transform.spec, cfg.evaluate.logs)) | {
        "model": cfg.serve.model, "version": version}
    name = cfg.serve.model.replace("models:/", "").replace("/", "_").replace("@", "_")
    out = Path(cfg.paths.work_dir) / "evaluations" / f"{name}-v{version}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    aucs = ", ".join(f"{t} AUC {m['auc']:.4f} logloss {m['logloss']:.5f}" for t, m in metrics["tasks"].items())
    print(f"evaluate {cfg.serve.model} (version {version}) on {metrics['rows']:,} rows "
          f"({metrics['rows_quarantined']:,} quarantined): {aucs}")
    print(f"  metrics: {out}")
    return metrics


def logs_only(cfg: Config, stage: str) -> None:
    if cfg.data.kind != "logs":
        raise config_mod.ConfigError(
            f"mtlrec {stage} is for rankers of click/conversion logs; data={cfg.data.name} is a "
            "benchmark: train and evaluate it")


def run_retrain(cfg: Config) -> dict:
    logs_only(cfg, "retrain")
    from mtlrec.pipeline.retrain import retrain

    result = retrain(cfg)
    if result["new_days"]:
        print(f"retrain: took in {len(result['new_days'])} new day(s): {', '.join(result['new_days'])}")
    print(f"retrain: {result['message']}")
    return result


def run_main_job(cfg: Config) -> None:
    """Synthetic logs → ingest → train MMoE → evaluate → export → register → champion."""
    run_synth(cfg)
    run_ingest(cfg)
    if (Path(cfg.paths.run_dir) / "run.json").exists() and not cfg.train.force:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"force": True})})
    run_train(cfg)
    run_evaluate(cfg)
    run_export(cfg)
    from mtlrec.pipeline.tracking import tracking_uri

    print(f"report: {Path(cfg.paths.run_dir) / 'evaluation' / 'report.md'}")
    print(f"open the MLflow UI: mlflow ui --backend-store-uri {tracking_uri(cfg.paths.work_dir)}")
