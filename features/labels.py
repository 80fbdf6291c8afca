"""Task labels of every kind, as polars expressions: their typed values, the problems that
make a row bad, the statistics a regression target is standardised with, and the
model-ready columns (no Python per row).

A label's typed value is null where it is missing and may be (`optional`), or where its
`mask_by` label is not 1; training and metrics skip those rows for that task only. Kinds
(see `spec.Label`): binary → 0.0 / 1.0; regression → the number (after log1p when asked);
multiclass → the class's index in `classes`. The model-ready column of a regression label
is standardised with statistics of the training split (`fit`), so the loss is in standard
deviations and `TaskInfo` carries what turns predictions back into the label's units.
"""

from __future__ import annotations

import math

import polars as pl

from mtlrec.features.folder import Sampled, TaskInfo
from mtlrec.features.spec import DataSpec, Label

BINARY_TRUE = ["1", "1.0", "true", "True"]
BINARY_FALSE = ["0", "0.0", "false", "False"]


def binary(col: str) -> pl.Expr:
    """0/1 column → 0.0/1.0, anything else → null."""
    raw = pl.col(col)
    return (
        pl.when(raw.is_in(BINARY_TRUE)).then(pl.lit(1.0))
        .when(raw.is_in(BINARY_FALSE)).then(pl.lit(0.0))
        .otherwise(None)
    )


def _number(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Float64, strict=False)


def _value(lab: Label) -> pl.Expr:
    """The label's value from its raw columns, ignoring any mask (null when missing)."""
    if lab.kind == "regression":
        y = _number(lab.column)
        y = pl.when(y.is_finite()).then(y).otherwise(None)
        return y.log1p() if lab.log1p else y
    if lab.kind == "multiclass":
        return pl.col(lab.column).replace_strict(lab.classes, list(range(len(lab.classes))),
                                                 default=None, return_dtype=pl.Float64)
    if lab.all_of is not None:
        return pl.min_horizontal(binary(c) for c in lab.all_of)
    if lab.positive is not None:
        return pl.when(pl.col(lab.column).is_null()).then(None).otherwise(
            pl.col(lab.column).is_in(lab.positive).cast(pl.Float64))
    return binary(lab.column)


def _applies(spec: DataSpec, lab: Label) -> pl.Expr:
    """True on the rows the task is trained and scored on (its mask label is 1)."""
    if lab.mask_by is None:
        return pl.lit(True)
    by = {x.name: x for x in spec.labels}[lab.mask_by]
    return (_value(by) == 1.0).fill_null(False)


def typed(spec: DataSpec) -> list[pl.Expr]:
    """Float32 typed value of every label, named after its task (null: skipped)."""
    out = []
    for lab in spec.labels:
        y = _value(lab)
        if lab.mask_by is not None:
            y = pl.when(_applies(spec, lab)).then(y).otherwise(None)
        out.append(y.cast(pl.Float32).alias(lab.name))
    return out


def problems(spec: DataSpec, quoted) -> list[tuple[str, pl.Expr, pl.Expr]]:
    """(kind, condition, message) of every label problem; `quoted(col)` shows a value.

    A label's source columns must be present where the task applies, unless it is
    optional; a present value must be valid for its kind."""
    out: list[tuple[str, pl.Expr, pl.Expr]] = []
    seen: set[tuple[str, str | None]] = set()
    for lab in sorted(spec.labels, key=lambda x: x.mask_by is not None):  # unmasked first
        if lab.optional:
            continue
        for c in ([lab.column] if lab.column else []) + (lab.all_of or []):
            if (c, lab.mask_by) in seen or (c, None) in seen:
                continue
            seen.add((c, lab.mask_by))
            missing = pl.col(c).is_null()
            if lab.mask_by is not None:
                missing = missing & _applies(spec, lab)
            out.append(("missing required field", missing, pl.lit(f"{c}: missing required value")))
    for c in spec.binary_columns:
        out.append(("label not 0/1", pl.col(c).is_not_null() & binary(c).is_null(),
                    pl.format("{}: label must be 0 or 1, got {}", pl.lit(c), quoted(c))))
    for lab in spec.labels:
        present = pl.col(lab.column).is_not_null() if lab.column else pl.lit(False)
        if lab.negative is not None:
            out.append(("label value unknown",
                        present & ~pl.col(lab.column).is_in(lab.positive + lab.negative),
                        pl.format("{}: value {} is in neither positive nor negative list",
                                  pl.lit(lab.column), quoted(lab.column))))
        elif lab.kind == "multiclass":
            out.append(("label value unknown", present & ~pl.col(lab.column).is_in(lab.classes),
                        pl.format("{}: value {} is not one of the classes of label '{}'",
                                  pl.lit(lab.column), quoted(lab.column), pl.lit(lab.name))))
        elif lab.kind == "regression":
            y = _number(lab.column)
            out.append(("label not a number", present & ~y.is_finite().fill_null(False),
                        pl.format("{}: label must be a finite number, got {}", pl.lit(lab.column),
                                  quoted(lab.column))))
            if lab.log1p:
                out.append(("negative label", present & (y < 0).fill_null(False),
                            pl.format("{}: label '{}' is learnt as log1p and must be >= 0, got {}",
                                      pl.lit(lab.column), pl.lit(lab.name), quoted(lab.column))))
    return out


def weight_problems(spec: DataSpec, quoted) -> list[tuple[str, pl.Expr, pl.Expr]]:
    """A sample weight must be a finite number ≥ 0."""
    if spec.weight is None:
        return []
    w = _number(spec.weight)
    return [("bad weight", ~(w.is_finite() & (w >= 0)).fill_null(True),
             pl.format("{}: weight must be a finite number >= 0, got {}", pl.lit(spec.weight),
                       quoted(spec.weight)))]


def typed_weight(spec: DataSpec, name: str) -> list[pl.Expr]:
    return [] if spec.weight is None else [_number(spec.weight).cast(pl.Float32).alias(name)]


def _regression(spec: DataSpec) -> list[Label]:
    return [lab for lab in spec.labels if lab.kind == "regression"]


def stats_exprs(spec: DataSpec) -> list[pl.Expr]:
    """Mean and std of every regression target (typed, i.e. after log1p); evaluate on the
    training split's typed labels."""
    return [e for lab in _regression(spec) for e in (
        pl.col(lab.name).cast(pl.Float64).mean().alias(f"{lab.name}\x00mean"),
        pl.col(lab.name).cast(pl.Float64).std(ddof=0).alias(f"{lab.name}\x00std"))]


def fit(spec: DataSpec, row: dict[str, float | None]) -> dict[str, dict]:
    """{task: {mean, std}} from the one-row result of `stats_exprs` (mean 0 and std 1 for a
    target left unstandardised, or without spread)."""
    out = {}
    for lab in _regression(spec):
        mean, std = row.get(f"{lab.name}\x00mean"), row.get(f"{lab.name}\x00std")
        ok = lab.standardize and mean is not None and math.isfinite(mean)
        spread = ok and std is not None and math.isfinite(std) and std > 1e-12
        out[lab.name] = {"mean": float(mean) if ok else 0.0, "std": float(std) if spread else 1.0}
    return out


def encode(spec: DataSpec, stats: dict[str, dict]) -> list[pl.Expr]:
    """Typed labels → model-ready Float32 columns (regression standardised)."""
    out = []
    for lab in spec.labels:
        y = pl.col(lab.name).cast(pl.Float64)
        if lab.kind == "regression":
            y = (y - stats[lab.name]["mean"]) / stats[lab.name]["std"]
        out.append(y.cast(pl.Float32).alias(lab.name))
    return out


def task_info(spec: DataSpec, stats: dict[str, dict]) -> list[TaskInfo]:
    sampled = sampled_info(spec)
    out = []
    for lab in spec.labels:
        s = stats.get(lab.name, {})
        offset = math.log(sampled.rate) if sampled is not None and sampled.task == lab.name else 0.0
        out.append(TaskInfo(lab.name, lab.kind, lab.classes, offset, s.get("mean", 0.0), s.get("std", 1.0),
                            lab.log1p, lab.loss, lab.huber_delta, lab.unit,
                            lab.optional or lab.mask_by is not None))
    return out


def sampled_info(spec: DataSpec) -> Sampled | None:
    s = spec.sampling
    return None if s is None or s.negative_rate >= 1.0 else Sampled(s.task, s.negative_rate)


def downsampled(spec: DataSpec, row_key: pl.Expr) -> pl.Expr:
    """True on the training rows negative downsampling drops: `task` = 0, and a seeded hash
    of the row (`row_key`, stable across re-ingests) above the rate."""
    s = spec.sampling
    if s is None or s.negative_rate >= 1.0:
        return pl.lit(False)
    u = (row_key.hash(seed=s.seed) % 1_000_003).cast(pl.Float64) / 1_000_003
    return (pl.col(s.task) == 0.0).fill_null(False) & (u >= s.negative_rate)
