"""Statistics of slices of rows (a day, a split, a sample of served rows): what drift and
skew compare (`features.drift`).

They are polars queries over typed rows (`validate.typed_columns`) that the caller runs
in the same `collect_all` as the pass that reads those rows, so no input is read twice.
They are kept per finest slice in mergeable form (sums, samples, every value's count:
`Collected`), so one pass gives each day, each split and the training split as a whole;
ingest also fits its vocabularies from these counts.
Per field, plain JSON (`SliceStats`):

- numeric (numeric fields, regression labels): count and missing (exact); mean, std, min,
  max and a quantile sketch of 101 quantiles (0, 1, …, 100 %, nearest rank) of a
  systematic sample (every k-th row, k set so that a pass samples about QUANTILE_SAMPLE
  rows; the values sampled are kept as `sample`). Exact per-day moments of every field
  would cost a grouped aggregation each, most of the statistics pass's budget; a sketch is
  comparable with any other (drift re-bins both on the reference's quantiles), and any
  histogram is read off it.
- categorical (categorical fields, the kept elements of a list field, multiclass labels):
  count, missing, distinct values, the `drift.top_k` most frequent values with their
  counts, and with a reference vocabulary, the values outside it (`oov`).
- binary (binary labels): count, missing, positives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from mtlrec import files
from mtlrec.features import vocab
from mtlrec.features.spec import CategoricalField, DataSpec

LEVELS = [i / 100 for i in range(101)]  # the quantile sketch's levels
QUANTILE_SAMPLE = 100_000  # rows a pass samples for the numeric sketches
_SLICE = "__slice"
_ROWS = "__rows"
_ALL = "all"


@dataclass(frozen=True)
class SliceStats:
    """One slice's statistics: its rows, each field's statistics (module docstring) and the
    columns of its input with their stored types (schema drift)."""

    rows: int
    fields: dict[str, dict]
    columns: dict[str, str] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        files.write_json(Path(path), asdict(self))

    @classmethod
    def from_json(cls, data: dict) -> "SliceStats":
        return cls(int(data["rows"]), dict(data["fields"]), dict(data.get("columns", {})))

    @classmethod
    def load(cls, path: Path) -> "SliceStats":
        return cls.from_json(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class _Field:
    """A field as the statistics see it."""

    name: str
    role: str  # feature | label
    kind: str  # numeric | categorical | binary
    categorical: CategoricalField | None = None  # a categorical feature's declaration
    classes: list[str] | None = None  # a multiclass label's classes (its typed value is the index)

    @property
    def multi(self) -> bool:
        return self.categorical is not None and self.categorical.multi

    @property
    def hashed(self) -> bool:
        return self.categorical is not None and self.categorical.hash_buckets is not None


def _fields(spec: DataSpec, labels: bool = True) -> list[_Field]:
    out = [_Field(f.name, "feature", "categorical", f) for f in spec.categorical]
    out += [_Field(f.name, "feature", "numeric") for f in spec.numeric]
    kinds = {"binary": "binary", "regression": "numeric", "multiclass": "categorical"}
    out += [_Field(lab.name, "label", kinds[lab.kind], classes=lab.classes) for lab in spec.labels if labels]
    return out


@dataclass(frozen=True)
class Plan:
    """The queries of one statistics pass, per finest slice (a combination of the values of
    the key columns); run them with the pass's other queries in one `pl.collect_all`."""

    fields: list[_Field]
    queries: list[pl.LazyFrame]
    top_k: int

    def collected(self, results: list[pl.DataFrame], columns: dict[str, str]) -> "Collected":
        moments, samples, *counts = results
        categorical = [f.name for f in self.fields if f.kind == "categorical"]
        return Collected(self, moments, samples, dict(zip(categorical, counts)), columns)


@dataclass(frozen=True)
class Collected:
    """Mergeable statistics of each finest slice (counts, samples, every value's count):
    any union of slices (a day, the training split) is read off them exactly, apart from
    what the sample gives (the sketch, mean, std, min, max)."""

    plan: Plan
    moments: pl.DataFrame  # per slice id: its key values, rows, each field's counts
    samples: pl.DataFrame  # per slice id: each numeric field's sampled values
    counts: dict[str, pl.DataFrame]  # field → slice id, value, len[, known]
    columns: dict[str, str]

    def values(self, key: str) -> list[str]:
        """The values of a key column (e.g. the days)."""
        return sorted(str(v) for v in self.moments[key].unique().drop_nulls().to_list())

    def with_vocabularies(self, vocabularies: Mapping[str, pl.DataFrame]) -> "Collected":
        """Each counted value marked known or not to its field's vocabulary (what `oov`
        counts), once for every slice."""
        counts = dict(self.counts)
        for f in self.plan.fields:
            vocab = vocabularies.get(f.name)
            if f.name in counts and vocab is not None and not f.hashed:
                counts[f.name] = counts[f.name].with_columns(
                    pl.col("value").is_in(vocab["value"].cast(pl.String).implode()).alias("known"))
        return replace(self, counts=counts)

    def value_counts(self, name: str, where: pl.Expr | bool = True) -> pl.DataFrame:
        """(value, count[, known]) of a categorical field over the slices `where` selects."""
        ids = self.moments.filter(where)[_SLICE].implode()
        known = [pl.col("known").first()] if "known" in self.counts[name].columns else []
        return (self.counts[name].filter(pl.col(_SLICE).is_in(ids)).group_by("value")
                .agg(pl.col("len").sum().alias("count"), *known))

    def slice(self, where: pl.Expr | bool = True) -> SliceStats:
        """The statistics of the rows of the slices `where` selects (over the key columns)."""
        m = self.moments.filter(where)
        samples = self.samples.filter(pl.col(_SLICE).is_in(m[_SLICE].implode()))
        rows = int(m[_ROWS].sum())
        fields = {}
        for f in self.plan.fields:
            missing = _sum(m, f.name, "missing")
            s = {"role": f.role, "kind": f.kind, "count": rows - missing, "missing": missing}
            if f.kind == "numeric":
                s |= _sketch(samples[f.name].explode().drop_nulls().to_numpy())
            elif f.kind == "binary":
                s["positives"] = _sum(m, f.name, "positives")
            else:
                s |= _top(self.value_counts(f.name, where), self.plan.top_k)
                if f.multi:
                    s["count"] = _sum(m, f.name, "elements")
                    s["mean_length"] = s["count"] / max(1, rows)
            fields[f.name] = s
        return SliceStats(rows, fields, dict(self.columns))


def plan(frame: pl.LazyFrame, spec: DataSpec, keys: list[str], rows: int, labels: bool = True) -> Plan:
    """The statistics of `frame` (typed rows) per combination of values of the `keys`
    columns (one slice when none). `rows`: about how many rows `frame` has (sets the
    sample: every k-th row); `labels=False`: the features only (served rows)."""
    # one integer slice id: grouping by it costs half of grouping by the key columns
    keyed = frame.with_columns((pl.struct(keys).hash(seed=0) if keys else pl.lit(0, pl.UInt64)).alias(_SLICE))
    fields = _fields(spec, labels)
    every = max(1, math.ceil(rows / QUANTILE_SAMPLE))
    moments = keyed.group_by(_SLICE).agg(*[pl.col(k).first() for k in keys], pl.len().alias(_ROWS),
                                         *[e for f in fields for e in _counts(f)])
    numeric = [f.name for f in fields if f.kind == "numeric"]
    samples = (keyed.select(_SLICE, *numeric).with_row_index("__i").filter(pl.col("__i") % every == 0)
               .group_by(_SLICE).agg(_finite(pl.col(n).cast(pl.Float64)).alias(n) for n in numeric))
    counts = [_value_counts(keyed, f) for f in fields if f.kind == "categorical"]
    return Plan(fields, [moments, samples, *counts], spec.drift.top_k)


def compute(frame: pl.LazyFrame, spec: DataSpec, rows: int, columns: dict[str, str],
            vocabularies: Mapping[str, pl.DataFrame] | None = None, labels: bool = True) -> SliceStats:
    """The statistics of all of `frame`, on their own (when no other pass reads the rows)."""
    p = plan(frame, spec, [], rows, labels)
    collected = p.collected(pl.collect_all(p.queries, engine="streaming"), columns)
    return collected.with_vocabularies(vocabularies or {}).slice()


def _finite(x: pl.Expr) -> pl.Expr:
    return x.filter(x.is_finite())


def _counts(f: _Field) -> list[pl.Expr]:
    """Exact per-slice counts: missing values (a list field: no or an empty list, and its
    kept elements), a binary label's positives."""
    col, name = pl.col(f.name), f.name
    if f.multi:
        length = vocab.elements(f.categorical).list.len()
        return [(col.is_null() | (length == 0)).sum().alias(f"{name}\x00missing"),
                length.sum().alias(f"{name}\x00elements")]
    out = [col.null_count().alias(f"{name}\x00missing")]
    if f.kind == "binary":
        out.append((col == 1).sum().alias(f"{name}\x00positives"))
    return out


def _value_counts(frame: pl.LazyFrame, f: _Field) -> pl.LazyFrame:
    """(slice, value, len) of a categorical field's non-missing values (a list field's kept
    elements, `vocab.elements`; a multiclass label's class names)."""
    values = frame.select(_SLICE, vocab.elements(f.categorical) if f.multi else pl.col(f.name))
    if f.multi:
        values = values.explode(f.name)
    if f.classes is not None:
        values = values.with_columns(pl.col(f.name).cast(pl.Int64).replace_strict(
            list(range(len(f.classes))), f.classes, default=None, return_dtype=pl.String))
    return (values.filter(pl.col(f.name).is_not_null())
            .group_by(_SLICE, pl.col(f.name).cast(pl.String).alias("value")).len())


def _sketch(values: np.ndarray) -> dict:
    """Mean, std, min, max and the 101 quantiles (nearest rank) of the sampled values."""
    sample = np.sort(np.asarray(values, np.float64))
    if not sample.size:
        return {"sample": 0, "mean": None, "std": None, "min": None, "max": None, "quantiles": []}
    return {"sample": int(sample.size), "mean": float(sample.mean()), "std": float(sample.std()),
            "min": float(sample[0]), "max": float(sample[-1]),
            "quantiles": sample[np.round(np.asarray(LEVELS) * (sample.size - 1)).astype(int)].tolist()}


def _top(counts: pl.DataFrame, k: int) -> dict:
    """Distinct values, the k most frequent, and the values outside the vocabulary (None
    without one)."""
    top = counts.top_k(k, by="count").sort(["count", "value"], descending=[True, False])
    oov = int(counts.filter(~pl.col("known"))["count"].sum()) if "known" in counts.columns else None
    return {"distinct": counts.height, "top": [[v, int(n)] for v, n in top.select("value", "count").iter_rows()],
            "oov": oov}


def _sum(m: pl.DataFrame, name: str, stat: str) -> int:
    return int(m[f"{name}\x00{stat}"].sum() or 0)
