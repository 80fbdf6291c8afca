"""Ingestion: raw logs → validated, quarantined, fitted, model-ready Parquet.

Passes (each a streaming polars query, no Python per row):
0. survey: every raw CSV is read once as plain lines (their number, and the lines with
   an unbalanced quote, which are read without quoting: features.sources).
1. read + validate: every raw file is parsed once; each row gets its typed values and a
   `bad` flag, and bad rows also keep their original strings. Written to a staging
   Parquet file in the work folder.
2. quarantine: bad rows with their original values and every reason.
3. fit: vocabularies and numeric statistics on the good rows of the training split.
   Its first query collects the statistics of each (split, day) (`features.stats`) on the
   rows as they came (before any negative downsampling): saved per day (stats/) and for
   the training split (the reference drift and skew judge a model's inputs against); the
   vocabularies are fitted from their value counts (no second count).
4. transform: good rows → ids and standardised floats, partitioned by split (and day).

The output folder is built under a temporary name and renamed into place at the end,
so a crash never leaves a half-written folder that a later stage trusts; a finished
output whose fingerprint (spec + input files) matches is reused, not rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import Field

from mtlrec import __version__
from mtlrec.configbase import Strict
from mtlrec.files import atomic_folder
from mtlrec.features import labels, numeric, stats, validate, vocab
from mtlrec.features.errors import DataError
from mtlrec.features.folder import WEIGHT_COL, FeaturesFolder
from mtlrec.features.sources import (
    EXTRA_COL,
    FILE_COL,
    LINE_COL,
    InputFile,
    collect_inputs,
    column_types,
    count_rows,
    open_inputs,
    scan,
    survey,
)
from mtlrec.features.spec import DataSpec
from mtlrec.features.split import ROLE_COL, SEQ_COL, SPLIT_COL, split_expr
from mtlrec.features.transform import VOCAB_FILE, FeatureTransform
from mtlrec.features.vocab import fit_vocabulary

log = logging.getLogger(__name__)

_STAGED = "_staged.parquet"  # typed values of the good rows
_BAD_ROWS = "_bad_rows.parquet"  # original strings of the bad rows
# Rows per Parquet row group of the model-ready data: the unit a streamed split reads and
# shuffles (`features.stream`); small enough that a window of the memory budget holds many.
ROW_GROUP_ROWS = 65_536


class IngestOptions(Strict):
    """`ingest.*` in the config."""

    force: bool = Field(False, description="rebuild even when inputs and spec are unchanged")
    base_artifacts: str | None = Field(
        None, description="a previous artifacts folder: extend its vocabularies (stable ids)"
    )
    in_memory_max_mb: float = Field(
        4096, ge=0, description="inputs whose parsed rows take up to this much memory (about "
        "twice their text or uncompressed Parquet columns) keep them in memory between passes; "
        "larger ones are staged to Parquet (bounded memory)",
    )
    compression: Literal["lz4", "zstd", "snappy", "uncompressed"] = "lz4"
    statistics: bool = Field(True, description="statistics per day (or split) and of the training "
                             "split, for drift and skew (off only to measure what they cost)")


def ingest(
    spec: DataSpec,
    out: Path,
    options: IngestOptions = IngestOptions(),
    *,
    resolved_config: str | None = None,
) -> FeaturesFolder:
    """Validate and transform the data set `spec` into the features folder `out`.

    resolved_config: YAML saved as `config.yaml` with the output. Raises DataError on
    bad input or too many rejects (their quarantine and manifest are kept next to `out`,
    in `<out>.rejected`).
    """
    target = FeaturesFolder(Path(out))
    base_artifacts = Path(options.base_artifacts) if options.base_artifacts else None
    inputs = open_inputs(spec.source, spec.expected_columns, spec.list_separators)
    fingerprint = _fingerprint(spec, inputs, base_artifacts, options.statistics)
    if not options.force and target.holds(fingerprint):
        log.info("ingest: %s is up to date (fingerprint %s), reusing it", out, fingerprint[:12])
        return target
    inputs = survey(inputs, spec.source)
    with atomic_folder(target.path) as work_path:
        work = FeaturesFolder(work_path)
        if resolved_config is not None:
            work.config_file.write_text(resolved_config)
        manifest = _build(spec, inputs, work, base_artifacts, options) | {"fingerprint": fingerprint}
        work.save_manifest(manifest)
        if manifest["status"] == "rejected":
            raise _rejected(spec, manifest, _keep_rejected(work, target.rejected))
    log.info("ingest: wrote %s (%s) in %.1fs", out, manifest["split_rows"],
             manifest["seconds"]["total"])
    return FeaturesFolder(target.path)


def _keep_rejected(work: FeaturesFolder, rejected: FeaturesFolder) -> FeaturesFolder:
    """Publish a rejected ingest's record (manifest, quarantine, config) for inspection."""
    with atomic_folder(rejected.path) as kept_path:
        kept = FeaturesFolder(kept_path)
        for src, dst in ((work.manifest_file, kept.manifest_file),
                         (work.quarantine_file, kept.quarantine_file),
                         (work.config_file, kept.config_file)):
            if src.is_file():
                src.rename(dst)
    return rejected


def _build(
    spec: DataSpec, files: list[InputFile], work: FeaturesFolder, base_artifacts: Path | None,
    options: IngestOptions,
) -> dict:
    """All passes into `work`; returns the manifest (status ok or rejected)."""
    # parsed rows take about twice their text (every value a string first): measured 2.5 GB
    # peak for 1.2 GB of CSV, 8.6 GB for 3.7 GB of uncompressed Parquet columns
    in_memory = 2 * sum(f.data_bytes for f in files) <= options.in_memory_max_mb * 2**20
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    staged, checks = _stage(spec, files, work.path, in_memory)
    timings["read_validate"] = time.perf_counter() - t0
    bad_rows = pl.scan_parquet(work.path / _BAD_ROWS)

    quarantine = _write_quarantine(spec, files, checks, bad_rows, work.quarantine_file)
    counts = _count(files, staged, bad_rows, spec.source)
    manifest = {
        "data": spec.name,
        "polars_version": pl.__version__,
        "mtlrec_version": __version__,
        **counts,
        "reject_ratio": counts["rows_quarantined"] / max(1, counts["rows_read"]),
        "quarantine_reasons": quarantine,
        "in_memory": in_memory,
    }
    log.info(
        "ingest: read %s rows, %s quarantined (%.3f%%) in %.1fs",
        f"{manifest['rows_read']:,}", f"{manifest['rows_quarantined']:,}",
        100 * manifest["reject_ratio"], timings["read_validate"],
    )
    if manifest["rows_read"] == 0:
        raise DataError(f"{spec.name}: no data rows in {[str(f.path) for f in files]}")
    if manifest["reject_ratio"] > spec.checks.max_reject_ratio:
        _drop_staging(work.path)
        return manifest | {"status": "rejected"}

    staged = staged.with_columns(_split(spec, files, staged, counts))
    t1 = time.perf_counter()
    # statistics of the rows as they came (before any downsampling), one query per field
    # and kind, in the fit's pass: its vocabularies are counted from them
    collected = _statistics(spec, staged, counts["rows_good"], files) if options.statistics else None
    staged, n_downsampled = _downsample(spec, staged)
    transform = _fit(spec, staged, base_artifacts,
                     collected if spec.sampling is None else None)
    timings["fit"] = time.perf_counter() - t1
    if collected is not None:
        _save_statistics(spec, collected, transform, work)
    t2 = time.perf_counter()
    split_rows = _write_model_ready(spec, transform, staged, work.data_dir, options.compression)
    timings["transform_write"] = time.perf_counter() - t2
    if sum(split_rows.values()) + n_downsampled != manifest["rows_good"]:
        raise RuntimeError(f"ingest lost rows: {split_rows} + {n_downsampled} downsampled vs "
                           f"{manifest['rows_good']} good rows")
    transform.save(work.artifacts_dir)
    truncated = _truncated(spec, staged)  # before the staged rows are removed
    _drop_staging(work.path)
    timings["total"] = time.perf_counter() - t0
    return manifest | {
        "status": "ok",
        "split_rows": split_rows,
        **({"rows_downsampled": n_downsampled, "sampling": spec.sampling.model_dump()}
           if spec.sampling is not None else {}),
        "table_sizes": transform.table_sizes,
        "lists_truncated": truncated,
        "tasks": spec.task_names,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }


def _stage(
    spec: DataSpec, files: list[InputFile], work: Path, in_memory: bool
) -> tuple[pl.LazyFrame, list[validate.Problem]]:
    """Pass 1: parse every file once into two outputs sharing the scan: the typed values
    of the good rows (kept in memory, or staged to Parquet for inputs too large for it)
    and the original strings of the bad rows (strict UTF-8 first, see `collect_inputs`).
    """
    return collect_inputs(files, spec.source,
                          lambda lossy: _stage_once(spec, files, work, in_memory, lossy))


def _stage_once(
    spec: DataSpec, files: list[InputFile], work: Path, in_memory: bool, lossy: bool
) -> tuple[pl.LazyFrame, list[validate.Problem]]:
    checks = validate.problems(spec, files, check_utf8=lossy)
    frames = [scan(f, spec.source, lossy).with_columns(pl.lit(f.role).alias(ROLE_COL))
              for f in files]
    lf = validate.flag_bad_rows(
        pl.concat(frames, how="vertical_relaxed").with_row_index(SEQ_COL), spec, checks, files, work)
    good = lf.filter(~pl.col(validate.BAD_COL)).select(
        *validate.typed_columns(spec), FILE_COL, LINE_COL, SEQ_COL, ROLE_COL
    )
    bad = lf.filter(pl.col(validate.BAD_COL)).select(
        FILE_COL, LINE_COL, EXTRA_COL, *spec.expected_columns,
        *([validate.DUP_COL] if spec.checks.unique_id else []),
    )
    bad_sink = bad.sink_parquet(work / _BAD_ROWS, lazy=True)
    if in_memory:
        frame, _ = pl.collect_all([good, bad_sink], engine="streaming")
        return frame.lazy(), checks
    staged = good.sink_parquet(work / _STAGED, compression="uncompressed", lazy=True)
    pl.collect_all([staged, bad_sink], engine="streaming")
    return pl.scan_parquet(work / _STAGED), checks


def _write_quarantine(
    spec: DataSpec, files: list[InputFile], checks: list[validate.Problem], bad: pl.LazyFrame,
    path: Path,
) -> dict[str, int]:
    """Pass 2: bad rows, original values and reasons; returns row counts per problem kind."""
    bad = validate.with_parsed_numbers(bad, spec)
    paths = pl.col(FILE_COL).replace_strict([f.index for f in files], [str(f.path) for f in files])
    bad.with_columns(validate.reason(checks).alias("reason"), paths.alias("source_file")).select(
        "source_file", pl.col(LINE_COL).alias("line"), "reason", *spec.expected_columns
    ).sink_parquet(path)
    kinds: dict[str, list[pl.Expr]] = {}
    for p in checks:
        kinds.setdefault(p.kind, []).append(p.condition)
    row = bad.select(
        pl.any_horizontal(conds).sum().alias(kind) for kind, conds in kinds.items()
    ).collect(engine="streaming").row(0, named=True)
    return {k: int(v) for k, v in row.items() if v}


def _count(files: list[InputFile], good: pl.LazyFrame, bad: pl.LazyFrame, source) -> dict:
    """Rows per file, good + quarantined, checked against an independent count of the file."""
    n_good = dict(good.group_by(FILE_COL).len().collect(engine="streaming").iter_rows())
    n_bad = dict(bad.group_by(FILE_COL).len().collect(engine="streaming").iter_rows())
    out = []
    for f in files:
        independent = count_rows(f, source)
        g, b = n_good.get(f.index, 0), n_bad.get(f.index, 0)
        if g + b != independent:
            raise RuntimeError(f"{f.path}: {independent} rows read but {g} good + {b} quarantined")
        out.append({"path": str(f.path), "role": f.role, "bytes": f.size,
                    "rows": independent, "quarantined": b})
    read = sum(f["rows"] for f in out)
    quarantined = sum(f["quarantined"] for f in out)
    return {"files": out, "rows_read": read, "rows_quarantined": quarantined,
            "rows_good": read - quarantined}


def _truncated(spec: DataSpec, staged: pl.LazyFrame) -> dict[str, int]:
    """Good rows per multi field whose list was longer than `max_len` (kept: its head)."""
    if not spec.multi_fields:
        return {}
    row = staged.select((pl.col(f.name).list.len() > f.max_len).sum().alias(f.name)
                        for f in spec.multi_fields).collect(engine="streaming").row(0, named=True)
    return {k: int(v or 0) for k, v in row.items()}


def _split(spec: DataSpec, files: list[InputFile], staged: pl.LazyFrame, counts: dict) -> pl.Expr:
    days: list[str] = []
    if spec.split.method == "day":
        days = staged.select(pl.col(spec.day).unique()).collect(engine="streaming")[spec.day].to_list()
    n_train = sum(f["rows"] for f in counts["files"] if f["role"] == "train")
    names = pl.col(FILE_COL).replace_strict([f.index for f in files], [f.path.name for f in files])
    return split_expr(
        spec, file_names=names, n_train_rows=n_train, days=days,
        has_test_source=spec.source.test is not None,
    )


def _downsample(spec: DataSpec, staged: pl.LazyFrame) -> tuple[pl.LazyFrame, int]:
    """Negative downsampling of the training split (data.sampling); returns the rows kept
    and how many were dropped (counted in the manifest: nothing leaves unrecorded)."""
    if labels.sampled_info(spec) is None:
        return staged, 0
    row = pl.col(FILE_COL).cast(pl.Int64) * 2**40 + pl.col(LINE_COL)
    drop = (pl.col(SPLIT_COL) == "train") & labels.downsampled(spec, row)
    n = int(staged.select(drop.sum()).collect(engine="streaming").item())
    log.info("ingest: negative downsampling of '%s' at rate %g dropped %s training rows",
             spec.sampling.task, spec.sampling.negative_rate, f"{n:,}")
    return staged.filter(~drop), n


def _fit(spec: DataSpec, good: pl.LazyFrame, base_artifacts: Path | None,
         collected: stats.Collected | None) -> FeatureTransform:
    """Pass 3: vocabularies and numeric statistics from the training split only; the
    vocabularies' value counts are read off the statistics when given (`collected`)."""
    train = good.filter(pl.col(SPLIT_COL) == "train")
    if train.select(pl.len()).collect(engine="streaming").item() == 0:
        raise DataError(f"{spec.name}: the training split is empty; check data.split ({spec.split})")
    base = FeatureTransform.load(base_artifacts).vocabularies if base_artifacts else {}
    vocab_fields = [f for f in spec.categorical if f.hash_buckets is None]
    # One field at a time, on the streaming engine: the default engine loads whole columns,
    # and one collect_all of every field caches their shared scan of the training rows
    # (a 50M-row ingest peaked at 12.5 GB here); each query reads one column.
    if collected is not None:
        counts = [collected.value_counts(f.name, pl.col(SPLIT_COL) == "train").select("value", "count")
                  for f in vocab_fields]
    else:
        counts = [(train.select(vocab.elements(f).explode()) if f.multi else train.select(f.name))
                  .group_by(f.name).agg(pl.len().alias("count")).rename({f.name: "value"})
                  .collect(engine="streaming") for f in vocab_fields]
    vocabularies = {f.name: fit_vocabulary(c, f, base.get(f.name)) for f, c in zip(vocab_fields, counts)}
    vocabularies |= {
        f.name: fit_vocabulary(pl.DataFrame(schema={"value": pl.String, "count": pl.Int64}), f)
        for f in spec.categorical if f.hash_buckets is not None
    }
    stats: dict[str, dict] = {}
    exprs = numeric.stats_exprs(spec.numeric) + labels.stats_exprs(spec)
    row = train.select(exprs).collect(engine="streaming").row(0, named=True) if exprs else {}
    if spec.numeric:
        stats = numeric.collect_stats(row, spec.numeric)
    return FeatureTransform(spec, vocabularies, stats, labels.fit(spec, row))


def _slice_keys(spec: DataSpec) -> list[str]:
    return [SPLIT_COL] + ([spec.day] if spec.day else [])


def _statistics(spec: DataSpec, staged: pl.LazyFrame, rows: int, files: list[InputFile]) -> stats.Collected:
    """The statistics of each (split, day) of the good rows, collected in one pass."""
    keys = _slice_keys(spec)
    plan = stats.plan(staged.with_columns(pl.col(k).cast(pl.String) for k in keys), spec, keys, rows)
    return plan.collected(pl.collect_all(plan.queries, engine="streaming"), column_types(files))


def _save_statistics(spec: DataSpec, collected: stats.Collected, transform: FeatureTransform,
                     work: FeaturesFolder) -> None:
    """Each day's statistics (each split's, without a day column) and the training split's
    (the reference), out-of-vocabulary counted against this ingest's vocabularies."""
    by = spec.day or SPLIT_COL
    collected = collected.with_vocabularies(transform.vocabularies)
    for value in collected.values(by):
        collected.slice(pl.col(by) == value).save(work.slice_stats_file(by, value))
    collected.slice(pl.col(SPLIT_COL) == "train").save(work.reference_stats_file)


def _write_model_ready(
    spec: DataSpec, transform: FeatureTransform, staged: pl.LazyFrame, folder: Path,
    compression: str,
) -> dict[str, int]:
    """Pass 4: good rows → model inputs, hive-partitioned by split (and day)."""
    keep = [c for c in (spec.id, spec.group) if c is not None]
    good = staged.select(
        *keep, *([pl.col(spec.day).cast(pl.String)] if spec.day else []), SPLIT_COL,
        *transform.expressions(), *labels.encode(spec, transform.label_stats),
        *([WEIGHT_COL] if spec.weight is not None else []),
    )
    keys = [SPLIT_COL] + ([spec.day] if spec.day else [])
    good.sink_parquet(pl.PartitionBy(folder, key=keys, include_key=False), mkdir=True,
                      compression=compression, row_group_size=ROW_GROUP_ROWS)
    written = (pl.scan_parquet(folder, hive_partitioning=True).group_by(SPLIT_COL).len()
               .collect(engine="streaming"))
    return {r[SPLIT_COL]: int(r["len"]) for r in written.iter_rows(named=True)}


def _rejected(spec: DataSpec, manifest: dict, folder: FeaturesFolder) -> DataError:
    top = sorted(manifest["quarantine_reasons"].items(), key=lambda kv: -kv[1])[:5]
    return DataError(
        f"{spec.name}: {manifest['rows_quarantined']:,} of {manifest['rows_read']:,} rows rejected "
        f"({100 * manifest['reject_ratio']:.2f}% > data.checks.max_reject_ratio = "
        f"{100 * spec.checks.max_reject_ratio:.2f}%); most frequent: {top}. "
        f"Quarantined rows with reasons: {folder.quarantine_file}"
    )


def _drop_staging(work: Path) -> None:
    for name in (_STAGED, _BAD_ROWS):
        (work / name).unlink(missing_ok=True)


def _fingerprint(spec: DataSpec, files: list[InputFile], base: Path | None, statistics: bool) -> str:
    h = hashlib.sha256(spec.model_dump_json().encode())
    h.update(b"statistics" if statistics else b"")
    for f in files:
        h.update(f"{f.path.resolve()}|{f.role}|{f.size}|{f.mtime_ns}".encode())
    if base is not None:
        h.update((Path(base) / VOCAB_FILE).read_bytes())
    h.update(f"{pl.__version__}|{__version__}".encode())
    return h.hexdigest()
