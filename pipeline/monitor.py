"""`mtlrec drift` and `mtlrec skew`: the drift report of a day on demand, and train/serve
skew (the rows a server logged against the champion's training window), printed and
written with plots (`pipeline.drift_report`). No torch: a serving host runs `skew`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl

from mtlrec.features import drift, raw, stats
from mtlrec.features.errors import DataError
from mtlrec.pipeline import drift_report, registry
from mtlrec.pipeline.config import Config
from mtlrec.serving import served_log


def day_drift(cfg: Config) -> list[drift.DriftReport]:
    """Day `monitor.day` (default: the newest partition of data.source.train) against the
    day before it and against the champion's training window (when there is a champion)."""
    partitions = raw.day_partitions(cfg.data.source.train)
    if not partitions:
        raise DataError(f"no day=YYYY-MM-DD partitions match data.source.train={cfg.data.source.train!r}")
    day = cfg.monitor.day or max(partitions)
    if day not in partitions:
        raise DataError(f"monitor.day={day}: no such partition; days: {', '.join(partitions)}")
    previous = max((d for d in partitions if d < day), default=None)
    champion = registry.champion(cfg)
    vocabularies = champion[1].transform.vocabularies if champion else {}
    out = Path(cfg.monitor.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        def day_stats(d: str) -> stats.SliceStats:
            return raw.read(cfg.data, partitions[d], Path(tmp) / f"{d}.parquet").statistics(cfg.data, vocabularies)

        reports = drift.against_day_and_champion(
            day, day_stats(day), cfg.data, previous=previous and (previous, day_stats(previous)),
            champion=champion and (champion[0], champion[1].reference))
    for key, report in reports.items():
        drift_report.write(report, out, f"day={day}-vs-{key}")
    return list(reports.values())


def skew(cfg: Config) -> drift.DriftReport:
    """The rows the served model (`serve.model`) logged (`serve.log_dir`) against its
    training window's statistics, shipped in its bundle."""
    version, bundle = registry.load_served(cfg)
    if bundle.reference is None:
        raise DataError(f"{cfg.serve.model} (version {version}) was exported before bundles carried "
                        "their training statistics: export it again")
    logged = served_log.files(Path(cfg.serve.log_dir)) if cfg.serve.log_dir else []
    if not logged:
        raise DataError(f"no served-row log in serve.log_dir={cfg.serve.log_dir!r}: serve with it set "
                        "(and serve.log_sample > 0) first")
    frame = pl.scan_parquet(logged)
    rows = frame.select(pl.len()).collect().item()
    spec = bundle.transform.spec
    features = [f.name for f in spec.categorical] + [f.name for f in spec.numeric]
    current = stats.compute(frame.select(features), spec, rows, {}, bundle.transform.vocabularies, labels=False)
    report = drift.compare(current, bundle.reference, spec, labels=False, types=False,
                           names=(f"served rows ({len(logged)} log files)", f"v{version} training window"))
    drift_report.write(report, Path(cfg.monitor.out), f"skew-v{version}")
    return report


def run_drift(cfg: Config) -> None:
    for report in day_drift(cfg):
        _print(report)
    print(f"drift: reports and plots in {cfg.monitor.out}")


def run_skew(cfg: Config) -> None:
    _print(skew(cfg))
    print(f"skew: report and plots in {cfg.monitor.out}")


def _print(report: drift.DriftReport) -> None:
    verdict = f"{len(report.drifted)} check(s) drifted" if report.drifted else "no drift"
    print(f"{report.current} vs {report.reference}: {report.rows:,} vs {report.reference_rows:,} rows, "
          f"{len(report.findings)} checks, {verdict}")
    for reason in report.reasons():
        print(f"  {reason}")
