"""The CLI's model-building stages: each parses nothing, calls the function that does the
work, and prints what happened. Retraining, the benchmarks and the tests call those
functions directly (`targets.ingest_logs`, `train.train_run`, `evaluate.evaluate_run`,
`export.publish`, `retrain.retrain`), never these printing wrappers. The serving stages
(`serve`, `score`) live in `serving_stages`, which never imports torch.
"""

from __future__ import annotations

from pathlib import Path

from mtlrec.features.errors import DataError
from mtlrec.features.synth import generate
from mtlrec.pipeline import registry
from mtlrec.pipeline.config import Config, ConfigError
from mtlrec.pipeline.evaluate import evaluate_run, evaluate_served
from mtlrec.pipeline.export import holdout_pattern, publish
from mtlrec.pipeline.retrain import retrain
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.pipeline.targets import SPLITS, ingest_logs, load_target
from mtlrec.pipeline.tracking import tracking_uri
from mtlrec.pipeline.train import train_run
from mtlrec.progress import Progress


def run_synth(cfg: Config) -> list[Path]:
    """Write synthetic AliExpress-schema logs, one file per day, into synth.out_dir."""
    with Progress(cfg.synth.days * cfg.synth.rows_per_day, "rows", "synth") as bar:
        paths = generate(cfg.synth, Path(cfg.synth.out_dir), progress=bar.update)
    print(f"synth: {len(paths)} day files in {cfg.synth.out_dir}")
    return paths


def run_ingest(cfg: Config) -> None:
    """Validate, quarantine, fit and transform `data` into paths.features. A benchmark data
    set (multimnist, qm9) is only built and checked: training reads it directly."""
    if cfg.data.kind != "logs":
        target = load_target(cfg)
        sizes = ", ".join(f"{name} {len(target.split(name)):,}" for name in SPLITS)
        print(f"ingest {cfg.data.name}: {sizes} examples; tasks {', '.join(target.tasks)} "
              f"(no model-ready files: `mtlrec train data={cfg.data.name}` reads it directly)")
        return
    out = ingest_logs(cfg)
    m = out.manifest
    print(f"ingest {cfg.data.name}: {m['rows_read']:,} rows read, {m['rows_good']:,} good, "
          f"{m['rows_quarantined']:,} quarantined -> {out.path}")
    if m["rows_quarantined"]:
        print(f"  quarantine reasons: {m['quarantine_reasons']}")


def run_train(cfg: Config) -> None:
    trained = train_run(cfg)
    if not trained.run_id:  # a rank > 0 under torchrun: rank 0 reports
        return
    for name, r in trained.results.items():
        print(f"train {name}: best validation {trained.score_names[name]} {r.best_valid_score:.4f} at epoch "
              f"{r.best_epoch} ({r.epochs_run} epochs, {r.samples_per_s:,.0f} samples/s)")
    print(f"  run folder: {trained.folder.path}  (MLflow run {trained.run_id})")


def run_evaluate(cfg: Config) -> None:
    if cfg.evaluate.logs:
        _print_served_evaluation(cfg)
        return
    metrics = evaluate_run(cfg)
    headline = metrics["headline"]  # each task's own metric (AUC, MAE, accuracy)
    values = ", ".join(f"{t} {headline[t]} {m[headline[t]]:.4g}" for t, m in metrics["tasks"].items())
    means = ", ".join(f"mean {name} {metrics[f'mean_{name}']:.4f}" for name in dict.fromkeys(headline.values()))
    delta = f"; Δm% {metrics['delta_m_pct']:+.3f}" if "delta_m_pct" in metrics else ""
    print(f"evaluate: test {values}; {means}{delta}")
    print(f"  report: {RunFolder(cfg.paths.run_dir).report_file}")


def _print_served_evaluation(cfg: Config) -> None:
    metrics, out = evaluate_served(cfg)
    shown = ("auc", "logloss", "mae", "rmse", "accuracy", "macro_f1")  # each kind's headline metrics
    values = "; ".join(f"{t} " + ", ".join(f"{k} {m[k]:.5g}" for k in shown if k in m)
                       for t, m in metrics["tasks"].items())
    print(f"evaluate {cfg.serve.model} (version {metrics['version']}) on {metrics['rows']:,} rows "
          f"({metrics['rows_quarantined']:,} quarantined): {values}")
    print(f"  metrics: {out}")


def run_export(cfg: Config) -> None:
    """Export the trained run, register it, gate it against the champion, move aliases."""
    _logs_only(cfg, "export")
    run = RunFolder(cfg.paths.run_dir)
    summary = publish(cfg, run, holdout_pattern(cfg))
    print(f"export: {cfg.registry.model_name} version {summary['version']} -> {summary['action']}")
    if summary["gate"] and summary["gate"]["failures"]:
        print("  gate failed: " + "; ".join(summary["gate"]["failures"]))
    if summary["action"] != "already champion":
        print(f"  gate report: {run.gate_report}")


def run_promote(cfg: Config) -> None:
    """Make `registry.version` (default: the challenger) the champion, without the gate."""
    c, name = registry.client(cfg), cfg.registry.model_name
    version = cfg.registry.version
    if version is None:
        challenger = registry.alias_version(c, name, registry.CHALLENGER)
        if challenger is None:
            raise DataError(f"{name} has no challenger: say which version, e.g. `mtlrec promote version=3`")
        version = challenger.version
    registry.check_version(cfg, str(version), "become the champion")
    old = registry.make_champion(c, name, str(version))
    print(f"promote: {name} champion is version {version}" + (f" (previous: {old})" if old else ""))


def run_rollback(cfg: Config) -> None:
    c, name = registry.client(cfg), cfg.registry.model_name
    previous = registry.alias_version(c, name, registry.PREVIOUS)
    if previous is not None:
        registry.check_version(cfg, str(previous.version), "be rolled back to")
    before, after = registry.rollback(c, name)
    print(f"rollback: {cfg.registry.model_name} champion {before} -> {after}")


def run_retrain(cfg: Config) -> None:
    _logs_only(cfg, "retrain")
    result = retrain(cfg)
    if result["new_days"]:
        print(f"retrain: took in {len(result['new_days'])} new day(s): {', '.join(result['new_days'])}")
    for day, record in result["rejected"].items():
        print(f"retrain: rejected day {day}: {record['reason']}; rows and reasons in "
              f"{record['quarantine']}; after a fix, take it in with "
              f"`mtlrec retrain retrain.accept_day={day}`")
    for day, record in result["drifted"].items():
        held = "trained on, blocks promotion" if record.get("action") == "block" else "not trained on"
        reports = [p["markdown"] for p in record["drift"]["reports"].values()]
        print(f"retrain: drifted day {day} ({held}): {record['reason']}; reports: {', '.join(reports)}; "
              f"if it is expected, take it in with `mtlrec retrain retrain.accept_day={day}`")
    if result["waiting"]:
        print(f"retrain: waiting for complete labels (retrain.label_delay_days="
              f"{cfg.retrain.label_delay_days}): {', '.join(result['waiting'])}")
    for day, record in result["waiting"].items():
        if record["drift"]["reasons"]:  # judged in full once its labels are complete
            print(f"retrain: day {day} (waiting) shows feature drift: " + "; ".join(record["drift"]["reasons"]))
    print(f"retrain: {result['message']}")


def run_main_job(cfg: Config) -> None:
    """Synthetic logs → ingest → train MMoE → evaluate → export → register → champion."""
    run_synth(cfg)
    run_ingest(cfg)
    run = RunFolder(cfg.paths.run_dir)
    if run.state() is not None and not cfg.train.force:  # the main job always trains anew
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"force": True})})
    run_train(cfg)
    run_evaluate(cfg)
    run_export(cfg)
    print(f"report: {run.report_file}")
    print(f"open the MLflow UI: mlflow ui --backend-store-uri {tracking_uri(cfg.paths.work_dir)}")


def _logs_only(cfg: Config, stage: str) -> None:
    if cfg.data.kind != "logs":
        raise ConfigError(
            f"mtlrec {stage} is for rankers of click/conversion logs; data={cfg.data.name} is a "
            "benchmark: train and evaluate it")
