"""`mtlrec bench scale`: logs larger than memory on one machine.

For each size in `bench.scale_rows` (default 1M, 10M, 50M rows): synthetic
AliExpress-schema logs with the multi-valued `tags` field, written as Parquet over
`bench.scale_days` days (the last day is test, the one before validation); ingested once
(time and peak RSS); then one epoch of MMoE trained and evaluated through the pipeline's
own functions with `trainer.data=stream`, and with `trainer.data=memory` where the
splits' tensors fit this machine's memory (samples/s, peak RSS, test AUC). Each step runs
in its own process, so its peak RSS is its own, and writes its result next to its data:
a bench stopped half-way resumes from the last finished step. Free disk is checked
before any data is written.

The ingest and the stream run use exactly the configuration `mtlrec run` gets from the
same overrides (see `run_overrides`); with `bench.scale_run` the largest size's logs then
go through a whole `mtlrec run` (synth and ingest reused, one epoch trained, evaluated,
exported, gated, registered): its wall time and peak RSS. Writes reports/scale.json and
reports/scale.md.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from mtlrec import files
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.benchmarks.measure import machine, run_worker, write_report
from mtlrec.progress import peak_rss_mb
from mtlrec.pipeline.config import Config, ConfigError

GB = 1 << 30
# Disk per row, measured at 1M rows (Parquet landing + model-ready features), with margin.
DISK_BYTES_PER_ROW = 700
CORRUPT_FRACTION = 0.001
# A process with torch, torchrec and the pipeline imported, before any data (measured).
PROCESS_BASE_BYTES = 1.5 * GB


def run_overrides(root: Path, rows: int, days: int) -> list[str]:
    """The configuration of `rows` synthetic rows: the bench's and `mtlrec run`'s."""
    return [f"paths.work_dir={root}", "synth.format=parquet", f"synth.days={days}",
            f"synth.rows_per_day={-(-rows // days)}", f"synth.corrupt_fraction={CORRUPT_FRACTION}",
            "trainer.max_epochs=1", "trainer.batch_size=2048"]


def run(cfg: Config, overrides: list[str]) -> dict:
    if cfg.data.name != "synth":
        raise ConfigError("bench scale runs on the synthetic AliExpress-schema logs (data=synth)")
    b = cfg.bench
    base = Path(cfg.paths.work_dir) / "bench" / "scale"
    sizes = []
    for rows in b.scale_rows:
        root = base / f"rows-{rows}"
        job = [*run_overrides(root, rows, b.scale_days), *overrides]
        size = {"rows": rows, "overrides": job, **_size(root, rows, job, b.scale_memory)}
        if b.scale_run and rows == max(b.scale_rows) and "skipped" not in size:
            size["run"] = _step(root / "run.json", ["run", json.dumps(job)])
        sizes.append(size)
        _report(cfg, overrides, sizes)  # a partial report after every size
    return _report(cfg, overrides, sizes)


def _size(root: Path, rows: int, job: list[str], with_memory: bool) -> dict:
    out: dict = {}
    need = rows * DISK_BYTES_PER_ROW
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if not (root / "ingest.json").exists() and need > free:
        out["skipped"] = f"needs ≈{need / GB:.1f} GB of disk, {free / GB:.1f} GB free"
        print(f"bench scale: {rows:,} rows skipped: {out['skipped']}", file=sys.stderr)
        return out
    # measured anew whenever this step runs (the features of an earlier run would be reused)
    out["ingest"] = _step(root / "ingest.json", ["ingest", json.dumps([*job, "ingest.force=true"])])
    out["stream"] = _step(root / "train-stream.json", ["train", json.dumps([*job, "trainer.data=stream"])])
    needed = _memory_bytes(out["ingest"])
    if not with_memory:
        out["memory"] = {"skipped": "bench.scale_memory=false"}
    elif needed > 0.8 * _ram_bytes():
        out["memory"] = {"skipped": f"the splits need ≈{needed / GB:.1f} GB in memory, this machine "
                                    f"has {_ram_bytes() / GB:.1f} GB"}
    else:
        run_dir = f"paths.run_dir={root / 'runs-memory'}"  # the stream run's stays as it is
        out["memory"] = _step(root / "train-memory.json",
                              ["train", json.dumps([*job, "trainer.data=memory", run_dir])])
    return out


def _step(result_file: Path, args: list[str]) -> dict:
    """A finished step's result, or the step run now in its own process (and kept)."""
    if result_file.exists():
        print(f"bench scale: reusing {result_file}", file=sys.stderr)
        return json.loads(result_file.read_text())
    print(f"bench scale: {args[0]} {result_file.parent.name} ...", file=sys.stderr)
    result = run_worker(__name__, args)
    files.write_json(result_file, result)
    return result


def _memory_bytes(ingest: dict) -> float:
    """What `trainer.data=memory` holds: every split's tensors, plus the process itself."""
    return ingest["rows_good"] * ingest["row_bytes"] + PROCESS_BASE_BYTES


def _ram_bytes() -> int:
    with open("/proc/meminfo") as fh:
        return int(next(line for line in fh if line.startswith("MemTotal")).split()[1]) * 1024



def _worker(argv: list[str]) -> dict:
    step, job = argv[0], json.loads(argv[1])
    # deferred: a worker imports only what its step needs, so its peak RSS is the step's own
    from mtlrec.features.batches import RowLayout
    from mtlrec.features.synth import generate
    from mtlrec.pipeline.benchmarks.measure import train_and_evaluate
    from mtlrec.pipeline.targets import ingest_logs

    cfg = config_mod.load(job)
    if step == "run":
        return _whole_run(cfg, job)
    if step == "ingest":
        landing = Path(cfg.synth.out_dir)
        t0 = time.perf_counter()
        generate(cfg.synth, landing)  # keeps the day files already written from these parameters
        synth_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        features = ingest_logs(cfg)
        manifest = features.manifest
        return {"synth_s": synth_s, "ingest_s": time.perf_counter() - t1,
                "rows_read": manifest["rows_read"], "rows_good": manifest["rows_good"],
                "rows_quarantined": manifest["rows_quarantined"], "split_rows": manifest["split_rows"],
                "stage_seconds": manifest["seconds"], "lists_truncated": manifest["lists_truncated"],
                "row_bytes": RowLayout.of(features.info()).row_bytes,
                "landing_gb": _size_gb(landing), "features_gb": _size_gb(Path(cfg.paths.features)),
                "peak_rss_mb": peak_rss_mb()}
    t0 = time.perf_counter()
    r = train_and_evaluate(job)
    metrics = r["metrics"]
    return {"data": cfg.trainer.data, "memory_budget_mb": cfg.trainer.memory_budget_mb,
            "train_s": r["train_s"], "samples_per_s": r["samples_per_s"],
            "test_auc": {t: m["auc"] for t, m in metrics["tasks"].items()},
            "mean_auc": metrics["mean_auc"], "total_s": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb()}


def _whole_run(cfg: Config, job: list[str]) -> dict:
    """`mtlrec run` of these logs (synth and ingest reuse the steps before: same
    configuration), as `mtlrec run` does it, in this process: wall time and peak RSS."""
    from mtlrec.pipeline.run_folder import RunFolder
    from mtlrec.pipeline.stages import run_main_job

    t0 = time.perf_counter()
    run_main_job(cfg)
    wall_s = time.perf_counter() - t0
    run = RunFolder(cfg.paths.run_dir)
    metrics, gate = run.metrics() or {}, run.gate_summary() or {}
    speeds = [h["samples_per_s"] for rows in run.history().values() for h in rows]
    return {"command": "mtlrec run " + " ".join(job), "wall_s": wall_s,
            "peak_rss_mb": peak_rss_mb(), "samples_per_s": speeds,
            "test_auc": {t: m["auc"] for t, m in metrics.get("tasks", {}).items()},
            "mean_auc": metrics.get("mean_auc"), "action": gate.get("action"),
            "holdout_rows": gate.get("holdout", {}).get("rows")}


def _size_gb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / GB


def _report(cfg: Config, overrides: list[str], sizes: list[dict]) -> dict:
    result = {"machine": machine(), "overrides": overrides, "days": cfg.bench.scale_days,
              "sizes": sizes, "goals": _goals(sizes)}
    js, md = write_report(Path(cfg.paths.reports), "scale", result, _markdown(result))
    print(f"bench scale: wrote {js} and {md}", file=sys.stderr)
    return result


def _goals(sizes: list[dict]) -> dict:
    """The issue's goals, measured where the sizes they name were run."""
    by_rows = {s["rows"]: s for s in sizes if "skipped" not in s}
    out: dict = {}
    if 10_000_000 in by_rows and 50_000_000 in by_rows:
        a, b = by_rows[10_000_000]["stream"]["peak_rss_mb"], by_rows[50_000_000]["stream"]["peak_rss_mb"]
        out["stream_rss_10m_to_50m"] = {"ratio": b / a, "goal": "≤ 1.2", "met": b / a <= 1.2}
    for rows, s in by_rows.items():
        if "run" in s:
            out[f"run_rss_le_4gb_{rows}"] = {"mb": s["run"]["peak_rss_mb"],
                                            "met": s["run"]["peak_rss_mb"] <= 4096}
        out[f"stream_rss_le_4gb_{rows}"] = {"mb": s["stream"]["peak_rss_mb"],
                                            "met": s["stream"]["peak_rss_mb"] <= 4096}
        out[f"ingest_rss_le_4gb_{rows}"] = {"mb": s["ingest"]["peak_rss_mb"],
                                            "met": s["ingest"]["peak_rss_mb"] <= 4096}
        memory = s.get("memory", {})
        if "samples_per_s" in memory:
            ratio = s["stream"]["samples_per_s"] / memory["samples_per_s"]
            auc_gap = abs(s["stream"]["mean_auc"] - memory["mean_auc"])
            out[f"stream_vs_memory_{rows}"] = {"speed_ratio": ratio, "speed_met": ratio >= 0.9,
                                               "auc_gap": auc_gap, "auc_met": auc_gap <= 0.002}
    return out


def _markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Logs larger than memory (`mtlrec bench scale`)", "",
             f"Synthetic AliExpress-schema logs with the multi-valued `tags` field (Parquet, "
             f"{r['days']} days: last = test, the one before = validation, "
             f"{100 * CORRUPT_FRACTION:.1f}% defective rows); MMoE (conf/model/mmoe.yaml), EW, "
             "one epoch, batch 2048, seed 2026; each step in its own process.", "",
             f"Machine: {m['cpus']} CPUs, {m['platform']}, torch {m['torch']}, {m['time']}.", "",
             "`synth s` is a few seconds where the day files had been written before from the same "
             "parameters and were kept.", "",
             "| rows | synth s | ingest s | ingest rows/s | ingest peak RSS MB | data | train samples/s "
             "| train peak RSS MB | test mean AUC |",
             "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for s in r["sizes"]:
        if "skipped" in s:
            lines.append(f"| {s['rows']:,} | skipped: {s['skipped']} | | | | | | | |")
            continue
        i = s["ingest"]
        for mode in ("stream", "memory"):
            t = s.get(mode, {})
            train = (f"{t['samples_per_s']:,.0f} | {t['peak_rss_mb']:,.0f} | {t['mean_auc']:.4f}"
                     if "samples_per_s" in t else f"skipped: {t.get('skipped', 'not run')} | |")
            lines.append(f"| {s['rows']:,} | {i['synth_s']:.0f} | {i['ingest_s']:.0f} | "
                         f"{i['rows_read'] / i['ingest_s']:,.0f} | {i['peak_rss_mb']:,.0f} | {mode} | {train} |")
    for s in r["sizes"]:
        if "run" in s:
            run = s["run"]
            lines += ["", f"A whole `mtlrec run` of the {s['rows']:,}-row logs (synth and ingest "
                      f"reused): **{run['wall_s'] / 60:.1f} min, peak RSS {run['peak_rss_mb']:,.0f} MB**; "
                      f"training {', '.join(f'{x:,.0f}' for x in run['samples_per_s'])} samples/s; "
                      f"test mean AUC {run['mean_auc']:.4f}; gate on {run['holdout_rows']:,} holdout "
                      f"rows: {run['action']}.", "", f"    {run['command']}"]
    lines += ["", "Goals:", "", "```", json.dumps(r["goals"], indent=2), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(_worker(sys.argv[1:])))
