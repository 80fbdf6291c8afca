"""Numeric statistics (fitted on the training split) and the numeric transform.

x → clip(x, lo, hi) → sign(x)·log1p(|x|) if log1p → fill missing → (x − mean) / std.
A constant fill ("zero" or a number) is in raw units, applied before clipping; "mean"
fills with the training mean of the pre-standardised value, i.e. 0 after standardising.
"""

from __future__ import annotations

import math
import struct

import polars as pl

from mtlrec.features.spec import NumericField


def _raw(f: NumericField) -> pl.Expr:
    # Inputs are rounded to float32 first (ingest parses them so), then computed in float64.
    x = pl.col(f.name).cast(pl.Float32).cast(pl.Float64)
    if f.fill == "zero":
        x = x.fill_null(0.0)
    elif not isinstance(f.fill, str):
        x = x.fill_null(float(f.fill))
    return x


def round_float32(value: float) -> float:
    """The float32 nearest a number, as a Python float."""
    return struct.unpack("f", struct.pack("f", value))[0]


def pre_standardize(f: NumericField) -> pl.Expr:
    """Clip and log1p: the value whose mean/std the statistics hold."""
    x = _raw(f)
    if f.clip is not None:  # bounds are raw values too: rounded like the inputs they bound
        x = x.clip(*(round_float32(bound) for bound in f.clip))
    if f.log1p:
        x = x.sign() * x.abs().log1p()
    return x


def stats_exprs(fields: list[NumericField]) -> list[pl.Expr]:
    """One aggregation per field and statistic; evaluate on the training split only."""
    out: list[pl.Expr] = []
    for f in fields:
        x = pre_standardize(f)
        out += [
            x.mean().alias(f"{f.name}\x00mean"),
            x.std(ddof=0).alias(f"{f.name}\x00std"),
            x.min().alias(f"{f.name}\x00min"),
            x.max().alias(f"{f.name}\x00max"),
            pl.col(f.name).null_count().alias(f"{f.name}\x00missing"),
            pl.len().alias(f"{f.name}\x00rows"),
        ]
    return out


def collect_stats(row: dict[str, float | None], fields: list[NumericField]) -> dict[str, dict]:
    """Reshape the one-row result of `stats_exprs` into {field: {stat: value}}."""
    stats: dict[str, dict] = {}
    for f in fields:
        s = {k: row[f"{f.name}\x00{k}"] for k in ("mean", "std", "min", "max", "missing", "rows")}
        s["mean"] = 0.0 if s["mean"] is None or not math.isfinite(s["mean"]) else float(s["mean"])
        std = s["std"]
        s["std"] = 1.0 if std is None or not math.isfinite(std) or std < 1e-12 else float(std)
        stats[f.name] = s
    return stats


def encode(f: NumericField, stats: dict) -> pl.Expr:
    """Expression: the field's float value → its model-ready Float32."""
    x = pre_standardize(f).fill_null(stats["mean"])
    if f.standardize:
        x = (x - stats["mean"]) / stats["std"]
    return x.cast(pl.Float32).alias(f.name)
