"""Ingestion: raw logs → validated, quarantined, fitted, model-ready Parquet.

Passes (each a streaming polars query, no Python per row):
1. read + validate: every raw file is parsed once; each row gets its typed values and a
   `bad` flag, and bad rows also keep their original strings. Written to a staging
   Parquet file in the work folder.
2. quarantine: bad rows with their original values and every reason.
3. fit: vocabularies and numeric statistics on the good rows of the training split.
4. transform: good rows → ids and standardised floats, partitioned by split (and day).

The output folder is built under a temporary name and renamed into place at the end,
so a crash never leaves a half-written folder that a later stage trusts; a finished
output whose fingerprint (spec + input files) matches is reused, not rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mtlrec.features import numeric, validate
from mtlrec.features.errors import DataError
from mtlrec.features.sources import EXTRA_COL, FILE_COL, LINE_COL, InputFile, open_inputs, scan
from mtlrec.features.spec import DataSpec
from mtlrec.features.split import ROLE_COL, SEQ_COL, SPLIT_COL, split_expr
from mtlrec.features.transform import FeatureTransform
from mtlrec.features.vocab import fit_vocabulary

log = logging.getLogger(__name__)

DATA_DIR = "data"
ARTIFACTS_DIR = "artifacts"
QUARANTINE_FILE = "quarantine.parquet"
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.yaml"
_STAGED = "_staged.parquet"
_BAD = "__bad"
_RAW = "__raw:"


@dataclass(frozen=True)
class IngestOutput:
    folder: Path
    manifest: dict

    @property
    def data_dir(self) -> Path:
        return self.folder / DATA_DIR

    @property
    def artifacts_dir(self) -> Path:
        return self.folder / ARTIFACTS_DIR


def ingest(
    spec: DataSpec,
    out: Path,
    *,
    base_artifacts: Path | None = None,
    force: bool = False,
    resolved_config: str | None = None,
) -> IngestOutput:
    """Validate and transform the data set `spec` into the folder `out`.

    base_artifacts: a previous ingest's artifacts folder; its vocabularies are extended,
    never renumbered (retraining). resolved_config: YAML saved as `config.yaml` with
    the output. Raises DataError on bad input or too many rejects.
    """
    out = Path(out)
    files = open_inputs(spec.source, spec.expected_columns)
    fingerprint = _fingerprint(spec, files, base_artifacts)
    previous = _read_manifest(out)
    if not force and previous and previous.get("fingerprint") == fingerprint:
        log.info("ingest: %s is up to date (fingerprint %s), reusing it", out, fingerprint[:12])
        return IngestOutput(out, previous)

    work = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if resolved_config is not None:
        (work / CONFIG_FILE).write_text(resolved_config)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    checks = validate.problems(spec, files)
    try:
        _stage(spec, files, checks, work / _STAGED)
    except pl.exceptions.PolarsError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise DataError(f"reading {[str(f.path) for f in files]} failed: {exc}") from exc
    timings["read_validate"] = time.perf_counter() - t0
    staged = pl.scan_parquet(work / _STAGED)

    quarantine = _write_quarantine(spec, files, checks, staged, work / QUARANTINE_FILE)
    counts = _count(files, staged, spec.source)
    manifest = {
        "data": spec.name,
        "fingerprint": fingerprint,
        "polars_version": pl.__version__,
        "files": counts["files"],
        "rows_read": counts["rows_read"],
        "rows_good": counts["rows_good"],
        "rows_quarantined": counts["rows_quarantined"],
        "reject_ratio": counts["rows_quarantined"] / max(1, counts["rows_read"]),
        "quarantine_reasons": quarantine,
    }
    log.info(
        "ingest: read %s rows, %s quarantined (%.3f%%) in %.1fs",
        f"{manifest['rows_read']:,}", f"{manifest['rows_quarantined']:,}",
        100 * manifest["reject_ratio"], timings["read_validate"],
    )
    if manifest["reject_ratio"] > spec.checks.max_reject_ratio:
        _reject(spec, work, out, manifest)

    split = _split(spec, files, staged)
    t1 = time.perf_counter()
    transform = _fit(spec, staged.filter(~pl.col(_BAD)).with_columns(split), base_artifacts)
    timings["fit"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    split_rows = _write_model_ready(spec, transform, staged.with_columns(split), work / DATA_DIR)
    timings["transform_write"] = time.perf_counter() - t2
    if sum(split_rows.values()) != manifest["rows_good"]:
        raise RuntimeError(f"ingest lost rows: {split_rows} vs {manifest['rows_good']} good rows")

    transform.save(work / ARTIFACTS_DIR)
    (work / _STAGED).unlink()
    timings["total"] = time.perf_counter() - t0
    manifest |= {
        "status": "ok",
        "split_rows": split_rows,
        "table_sizes": transform.table_sizes,
        "tasks": spec.task_names,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    _write_manifest(work, manifest)
    _replace(work, out)
    log.info("ingest: wrote %s (%s) in %.1fs", out, split_rows, timings["total"])
    return IngestOutput(out, manifest)


def _stage(spec: DataSpec, files: list[InputFile], checks: list[validate.Problem], path: Path) -> None:
    """Pass 1: parse every file once; typed values for all rows, originals for bad rows."""
    frames = [scan(f, spec.source).with_columns(pl.lit(f.role).alias(ROLE_COL)) for f in files]
    lf = pl.concat(frames, how="vertical_relaxed").with_row_index(SEQ_COL)
    if spec.checks.unique_id:
        lf = lf.with_columns((~pl.col(spec.id).is_first_distinct()).alias(validate.DUP_COL))
    bad = validate.bad_flag(checks)
    raw_cols = spec.expected_columns + [EXTRA_COL] + (
        [validate.DUP_COL] if spec.checks.unique_id else []
    )
    lf = lf.with_columns(bad.alias(_BAD)).select(
        *validate.typed_columns(spec),
        FILE_COL, LINE_COL, SEQ_COL, ROLE_COL, _BAD,
        *(pl.when(pl.col(_BAD)).then(pl.col(c)).alias(_RAW + c) for c in raw_cols),
    )
    lf.sink_parquet(path, compression="lz4", row_group_size=256 * 1024)


def _write_quarantine(
    spec: DataSpec, files: list[InputFile], checks: list[validate.Problem], staged: pl.LazyFrame,
    path: Path,
) -> dict[str, int]:
    """Pass 2: bad rows, original values and reasons; returns row counts per problem kind."""
    raw = staged.filter(pl.col(_BAD)).select(
        FILE_COL, LINE_COL,
        *(pl.col(c).alias(c.removeprefix(_RAW)) for c in staged.collect_schema() if c.startswith(_RAW)),
    )
    paths = pl.col(FILE_COL).replace_strict([f.index for f in files], [str(f.path) for f in files])
    bad = raw.with_columns(validate.reason(checks).alias("reason"), paths.alias("source_file"))
    bad.select(
        "source_file", pl.col(LINE_COL).alias("line"), "reason", *spec.expected_columns
    ).sink_parquet(path)
    kinds: dict[str, list[pl.Expr]] = {}
    for p in checks:
        kinds.setdefault(p.kind, []).append(p.condition)
    row = raw.select(
        pl.any_horizontal(conds).sum().alias(kind) for kind, conds in kinds.items()
    ).collect().row(0, named=True)
    return {k: int(v) for k, v in row.items() if v}


def _count(files: list[InputFile], staged: pl.LazyFrame, source) -> dict:
    """Rows per file: read independently of the validation pass, then checked against it."""
    per_file = (
        staged.group_by(FILE_COL)
        .agg(pl.len().alias("rows"), pl.col(_BAD).sum().alias("quarantined"))
        .collect()
    )
    by_index = {r[FILE_COL]: r for r in per_file.iter_rows(named=True)}
    out = []
    for f in files:
        independent = scan(f, source).select(pl.len()).collect().item()
        got = by_index.get(f.index, {"rows": 0, "quarantined": 0})
        if got["rows"] != independent:
            raise RuntimeError(f"{f.path}: {independent} rows in the file, {got['rows']} validated")
        out.append({"path": str(f.path), "role": f.role, "bytes": f.path.stat().st_size,
                    "rows": int(got["rows"]), "quarantined": int(got["quarantined"])})
    read = sum(f["rows"] for f in out)
    bad = sum(f["quarantined"] for f in out)
    return {"files": out, "rows_read": read, "rows_quarantined": bad, "rows_good": read - bad}


def _split(spec: DataSpec, files: list[InputFile], staged: pl.LazyFrame) -> pl.Expr:
    days: list[str] = []
    if spec.split.method == "day":
        days = staged.filter(~pl.col(_BAD)).select(pl.col(spec.day).unique()).collect()[spec.day].to_list()
    n_train = staged.filter(pl.col(ROLE_COL) == "train").select(pl.len()).collect().item()
    names = pl.col(FILE_COL).replace_strict([f.index for f in files], [f.path.name for f in files])
    return split_expr(
        spec, file_names=names, n_train_rows=n_train, days=days,
        has_test_source=spec.source.test is not None,
    )


def _fit(spec: DataSpec, good: pl.LazyFrame, base_artifacts: Path | None) -> FeatureTransform:
    """Pass 3: vocabularies and numeric statistics from the training split only."""
    train = good.filter(pl.col(SPLIT_COL) == "train")
    base = FeatureTransform.load(base_artifacts).vocabularies if base_artifacts else {}
    vocab_fields = [f for f in spec.categorical if f.hash_buckets is None]
    counts = pl.collect_all(
        train.group_by(f.name).agg(pl.len().alias("count")).rename({f.name: "value"})
        for f in vocab_fields
    )
    vocabularies = {f.name: fit_vocabulary(c, f, base.get(f.name)) for f, c in zip(vocab_fields, counts)}
    vocabularies |= {
        f.name: fit_vocabulary(pl.DataFrame(schema={"value": pl.String, "count": pl.Int64}), f)
        for f in spec.categorical if f.hash_buckets is not None
    }
    stats: dict[str, dict] = {}
    if spec.numeric:
        row = train.select(numeric.stats_exprs(spec.numeric)).collect().row(0, named=True)
        stats = numeric.collect_stats(row, spec.numeric)
    return FeatureTransform(spec, vocabularies, stats)


def _write_model_ready(
    spec: DataSpec, transform: FeatureTransform, staged: pl.LazyFrame, folder: Path
) -> dict[str, int]:
    """Pass 4: good rows → model inputs, hive-partitioned by split (and day)."""
    keep = [c for c in (spec.id, spec.group) if c is not None]
    good = staged.filter(~pl.col(_BAD)).select(
        *keep, *([pl.col(spec.day).cast(pl.String)] if spec.day else []), SPLIT_COL,
        *transform.expressions(), *spec.task_names,
    )
    keys = [SPLIT_COL] + ([spec.day] if spec.day else [])
    good.sink_parquet(pl.PartitionBy(folder, key=keys, include_key=False), mkdir=True)
    written = pl.scan_parquet(folder, hive_partitioning=True).group_by(SPLIT_COL).len().collect()
    return {r[SPLIT_COL]: int(r["len"]) for r in written.iter_rows(named=True)}


def _reject(spec: DataSpec, work: Path, out: Path, manifest: dict) -> None:
    manifest |= {"status": "rejected"}
    (work / _STAGED).unlink()
    _write_manifest(work, manifest)
    failed = out.parent / f"{out.name}.rejected"
    _replace(work, failed)
    top = sorted(manifest["quarantine_reasons"].items(), key=lambda kv: -kv[1])[:5]
    raise DataError(
        f"{spec.name}: {manifest['rows_quarantined']:,} of {manifest['rows_read']:,} rows rejected "
        f"({100 * manifest['reject_ratio']:.2f}% > data.checks.max_reject_ratio = "
        f"{100 * spec.checks.max_reject_ratio:.2f}%); most frequent: {top}. "
        f"Quarantined rows with reasons: {failed / QUARANTINE_FILE}"
    )


def _fingerprint(spec: DataSpec, files: list[InputFile], base: Path | None) -> str:
    h = hashlib.sha256(spec.model_dump_json().encode())
    for f in files:
        st = f.path.stat()
        h.update(f"{f.path.resolve()}|{f.role}|{st.st_size}|{st.st_mtime_ns}".encode())
    if base is not None:
        h.update((Path(base) / "vocab.parquet").read_bytes())
    h.update(pl.__version__.encode())
    return h.hexdigest()


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("status") == "ok" else None


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def _replace(work: Path, target: Path) -> None:
    """Swap a finished folder into place: rename is atomic, the old copy goes last."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    work.rename(target)
    shutil.rmtree(old, ignore_errors=True)
