"""Synthetic click/conversion logs in the AliExpress layout, with a hidden ground truth.

Schema: search_id, categorical_1..16, numerical_1..63, click, conversion (exactly the
real files' columns) plus `country`, `day` and the multi-valued `tags` (0 to `max_tags`
tag ids per row: a Parquet list column, or `|`-joined in CSV). One file per day.

The ground truth is a logit per task: a sum of per-value effects of the categorical
fields, the mean effect of the row's tags, linear effects of the numeric ones, and a
per-country offset. Categorical
values follow a truncated Zipf law (cardinalities up to 10^6), numeric values lie in
[0, 1] and are mostly zero, like the real logs. The CVR effects are drawn with
correlation `conflict_rho` to the CTR effects: 1 makes the tasks agree, 0 independent,
−1 pull in opposite directions (a knob for studying gradient conflict). Intercepts are
calibrated so the click rate and the conversion rate among clicks hit their targets;
conversion = click AND buy, so the second task is CTCVR.

That AND ties the tasks together: with ρ = −1 a value that raises the click logit by a
lowers the CVR logit by a, and the CTCVR log-rate ≈ click + CVR logit barely moves —
still aligned with the click. `conflict_on=ctcvr` puts the knob on the conversion label
itself: the CVR effects become ρ·a + √(1−ρ²)·b − a, so the CTCVR effects ≈ ρ·a + √(1−ρ²)·b
correlate ρ with the click's, while a conversion still needs a click (the labels stay
positively dependent given the features: the clickbait pattern of real logs).

Neither mode makes the tasks' gradients conflict: each task has its own tower, which flips
the sign of a shared feature for free, so opposed effects ask the shared layers for the
same features (README, "Conflicting tasks"). `conflict_on=intent` puts the knob where no
tower can reach: every row gets an unobserved intent z ~ N(0, intent_sd²) (the session's
mood, in no column) added to the click logit, and ρ·z + √(1−ρ²)·z' added to the CVR
logit, while the CVR effects of the features are 0.8 × the click's + 0.6 × their own (what
users click is mostly what they buy, so the towers read the shared features with the
same sign). At ρ < 0 a browsing session clicks and does not buy: given the features the
labels pull apart, and every minibatch's task gradients on the shared layers oppose.
For studying real conflict, `conflict_labels` also writes `buy` (the purchase label itself, drawn whether
or not the row was clicked), and `like` / `share`, two more labels whose effects are
0.8 × the click's / the buy's plus 0.6 × their own: the tasks {click, like} and
{buy, share} agree within and conflict across when ρ < 0. Their effects come from a
generator of their own, so switching them on changes none of the other columns.

`mixed_labels` writes two labels of other kinds, for multi-task models that mix them
(from a generator of their own too): `dwell`, seconds on the item after a click
(regression, heavy-tailed: exp(2 + 0.4·CVR signal + 0.5·noise); empty when there was no
click, and for `dwell_missing` of the clicks, as when a client's beacon is lost), and
`intent` ∈ {browse, buy, other} (multiclass: the largest of the CTR signal, the CVR
signal and 0, each plus Gumbel noise).
"""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from mtlrec import files
from mtlrec.configbase import Strict

log = logging.getLogger(__name__)

N_CATEGORICAL = 16
N_NUMERIC = 63
_MARKERS = ".synth"  # per day file, the parameters it was written from (hidden from day=* globs)
DEFAULT_CARDINALITIES = (
    1_000_000, 300_000, 100_000, 30_000, 10_000, 3_000, 1_000, 300,
    100, 50, 20, 10, 8, 5, 3, 2,
)


class SynthDrift(Strict):
    """Drift injected into some days (`synth.drift`), each kind a test of a drift check."""

    days: list[str] = Field(description="the days (YYYY-MM-DD) drifted")
    shift_numeric: str | None = Field(None, description="a numeric column: `shift_by` added to its nonzero values")
    shift_by: float = 0.3
    new_category: str | None = Field(None, description="a categorical column: `new_share` of the rows get a new value")
    new_share: float = Field(0.5, gt=0, le=1)
    click_rate_factor: float | None = Field(None, gt=0, description="clicks multiplied by about this "
                                             "(conversions need a click, and follow)")
    drop_column: str | None = Field(None, description="a column the day's file lacks")


class SynthParams(Strict):
    """Everything the generator's output depends on (`synth.*` in the config)."""

    days: int = Field(5, ge=1)
    rows_per_day: int = Field(100_000, ge=1)
    start_day: str = "2026-11-01"
    seed: int = 2026
    ctr: float = Field(0.04, gt=0, lt=1, description="target click rate")
    cvr: float = Field(0.08, gt=0, lt=1, description="target conversion rate among clicks "
                       "(CTCVR ≈ ctr · cvr)")
    conflict_rho: float = Field(0.0, ge=-1, le=1, description="correlation of the CVR effects "
                                "(with conflict_on=ctcvr: of the CTCVR effects) with the CTR effects")
    conflict_on: Literal["cvr", "ctcvr", "intent"] = Field(
        "cvr", description="what conflict_rho correlates with the click's: the effects of the "
        "purchase given a click, of the conversion label itself, or the rows' unobserved "
        "intents (module docstring)")
    intent_sd: float = Field(3.0, gt=0, description="std of the unobserved per-row intent "
                             "(conflict_on=intent)")
    signal: float = Field(1.2, gt=0, description="std of the ground-truth logit before calibration")
    zipf_a: float = Field(1.1, gt=0)
    cardinalities: tuple[int, ...] = DEFAULT_CARDINALITIES
    countries: tuple[str, ...] = ("NL", "ES", "FR", "US")
    format: Literal["csv", "parquet"] = "csv"
    chunk_rows: int = Field(250_000, ge=1, description="rows generated at a time (bounds memory)")
    corrupt_fraction: float = Field(0.0, ge=0, lt=1, description="rows given one realistic "
                                    "defect (tests quarantine at scale)")
    conflict_labels: bool = Field(False, description="also write buy (without the click), like "
                                  "and share: labels that conflict for ρ < 0 (module docstring)")
    like_rate: float = Field(0.1, gt=0, lt=1, description="target rate of like and of share")
    mixed_labels: bool = Field(False, description="also write dwell (regression, empty without a "
                               "click) and intent (multiclass): module docstring")
    dwell_missing: float = Field(0.2, ge=0, lt=1, description="share of clicked rows whose dwell is lost")
    tags: int = Field(5_000, ge=0, description="distinct tags of the multi-valued `tags` column "
                      "(0: no such column)")
    max_tags: int = Field(8, ge=1, description="tags per row are uniform on 0..max_tags")
    drift: SynthDrift | None = Field(None, description="drift injected into some days (tests of `mtlrec drift`)")

    @field_validator("cardinalities")
    @classmethod
    def _one_per_field(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) != N_CATEGORICAL or min(value) < 1:
            raise ValueError(f"need {N_CATEGORICAL} cardinalities of at least 1, got {value}")
        return value


class GroundTruth:
    """Everything fixed by the seed: value frequencies, effects, intercepts."""

    def __init__(self, p: SynthParams) -> None:
        rng = np.random.default_rng(p.seed)
        # the CVR effects are own_a·a + rest·b for the click's a and an own b. ctcvr: ρ·a +
        # rest·b − a, so that click + CVR, the CTCVR logit's effects (log P(click ∧ buy) ≈
        # ctr + cvr logits), correlate ρ with the click's. intent: ρ acts on the intents.
        own_a, rest = {"cvr": (p.conflict_rho, np.sqrt(1.0 - p.conflict_rho**2)),
                       "ctcvr": (p.conflict_rho - 1.0, np.sqrt(1.0 - p.conflict_rho**2)),
                       "intent": (0.8, 0.6)}[p.conflict_on]
        # Share of logit variance per categorical field; numeric fields get a fixed share.
        n_fields = N_CATEGORICAL + 1
        scale = p.signal / np.sqrt(n_fields)
        self.cdf, self.value_of_rank, self.ctr_eff, self.cvr_eff = [], [], [], []
        for card in p.cardinalities:
            w = 1.0 / np.arange(1, card + 1, dtype=np.float64) ** p.zipf_a
            self.cdf.append(np.cumsum(w) / w.sum())
            self.value_of_rank.append(rng.permutation(card).astype(np.int64))
            a, b = rng.standard_normal(card), rng.standard_normal(card)
            self.ctr_eff.append((scale * a).astype(np.float32))
            self.cvr_eff.append((scale * (own_a * a + rest * b)).astype(np.float32))
        self.p_zero = rng.uniform(0.1, 0.9, N_NUMERIC)
        a, b = rng.standard_normal(N_NUMERIC), rng.standard_normal(N_NUMERIC)
        num_scale = 2.0 * scale / np.sqrt(N_NUMERIC)
        self.w_ctr, self.w_cvr = num_scale * a, num_scale * (own_a * a + rest * b)
        w = 1.0 / np.arange(1, max(p.tags, 1) + 1, dtype=np.float64) ** p.zipf_a
        self.tag_cdf = np.cumsum(w) / w.sum()
        a, b = rng.standard_normal(max(p.tags, 1)), rng.standard_normal(max(p.tags, 1))
        self.tag_ctr = (scale * a).astype(np.float32)
        self.tag_cvr = (scale * (own_a * a + rest * b)).astype(np.float32)
        self.country_ctr = 0.3 * rng.standard_normal(len(p.countries))
        self.country_cvr = 0.3 * rng.standard_normal(len(p.countries))
        self.country_p = rng.dirichlet(np.full(len(p.countries), 4.0))
        self.follower: dict[str, tuple] = {}  # like / share: (leader's effects, own, rate)
        if p.conflict_labels:
            own = np.random.default_rng(p.seed + 2)
            for name, leader in (("like", "ctr"), ("share", "cvr")):
                self.follower[name] = (leader, [own.standard_normal(card).astype(np.float32) * scale
                                                for card in p.cardinalities],
                                       own.standard_normal(N_NUMERIC) * num_scale,
                                       own.standard_normal(max(p.tags, 1)).astype(np.float32) * scale)
        self.b_ctr = self.b_cvr = 0.0
        self.b_follower = {name: 0.0 for name in self.follower}
        probe = self.draw(np.random.default_rng(p.seed + 1), 200_000, p)
        self.b_ctr = _calibrate(probe["ctr_logit"], p.ctr)
        self.b_cvr = _calibrate(probe["cvr_logit"], p.cvr)
        self.b_follower = {name: _calibrate(probe[f"{name}_logit"], p.like_rate) for name in self.follower}

    def draw(self, rng: np.random.Generator, n: int, p: SynthParams) -> dict[str, np.ndarray]:
        cats = np.empty((n, N_CATEGORICAL), dtype=np.int64)
        ctr_logit = np.full(n, self.b_ctr)
        cvr_logit = np.full(n, self.b_cvr)
        own = {name: np.full(n, self.b_follower[name]) for name in self.follower}  # own effects
        for j in range(N_CATEGORICAL):
            rank = np.searchsorted(self.cdf[j], rng.random(n), side="right")
            rank = np.minimum(rank, len(self.cdf[j]) - 1)
            cats[:, j] = self.value_of_rank[j][rank]
            ctr_logit += self.ctr_eff[j][rank]
            cvr_logit += self.cvr_eff[j][rank]
            for name, (_, effects, _, _) in self.follower.items():
                own[name] += effects[j][rank]
        nonzero = rng.random((n, N_NUMERIC)) >= self.p_zero
        nums = np.where(nonzero, rng.beta(2.0, 5.0, (n, N_NUMERIC)), 0.0).round(6)
        centred = nums - (1.0 - self.p_zero) * (2.0 / 7.0)  # subtract E[x]
        ctr_logit += centred @ self.w_ctr
        cvr_logit += centred @ self.w_cvr
        for name, (_, _, w, _) in self.follower.items():
            own[name] += centred @ w
        country = rng.choice(len(p.countries), size=n, p=self.country_p)
        ctr_logit += self.country_ctr[country]
        cvr_logit += self.country_cvr[country]
        if p.conflict_on == "intent":  # drawn only here: the other modes' rows stay as they were
            z, own_z = p.intent_sd * rng.standard_normal((2, n))
            ctr_logit += z
            cvr_logit += p.conflict_rho * z + np.sqrt(1.0 - p.conflict_rho**2) * own_z
        out = {"cats": cats, "nums": nums, "country": country}
        if p.tags:
            lengths = rng.integers(0, p.max_tags + 1, n)
            tags = np.minimum(np.searchsorted(self.tag_cdf, rng.random(lengths.sum()), side="right"),
                              p.tags - 1)
            rows = np.repeat(np.arange(n), lengths)
            per_row = np.maximum(lengths, 1)
            ctr_logit += np.bincount(rows, self.tag_ctr[tags], n) / per_row
            cvr_logit += np.bincount(rows, self.tag_cvr[tags], n) / per_row
            for name, (_, _, _, tag_effects) in self.follower.items():
                own[name] += np.bincount(rows, tag_effects[tags], n) / per_row
            out |= {"tags": tags, "tag_lengths": lengths}
        leaders = {"ctr": ctr_logit - self.b_ctr, "cvr": cvr_logit - self.b_cvr}
        follow = {f"{name}_logit": 0.8 * leaders[leader] + 0.6 * (own[name] - self.b_follower[name])
                  + self.b_follower[name] for name, (leader, *_) in self.follower.items()}
        return out | {"ctr_logit": ctr_logit, "cvr_logit": cvr_logit} | follow


def _calibrate(logit: np.ndarray, target: float) -> float:
    """Offset b with mean(sigmoid(logit + b)) = target (bisection; the mean is monotone in b)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _frame(truth: GroundTruth, rng: np.random.Generator, n: int, first_id: int, day: str,
           p: SynthParams) -> pl.DataFrame:
    d = truth.draw(rng, n, p)
    click = rng.random(n) < 1.0 / (1.0 + np.exp(-d["ctr_logit"]))
    buy = rng.random(n) < 1.0 / (1.0 + np.exp(-d["cvr_logit"]))
    cols: dict[str, object] = {"search_id": np.arange(first_id, first_id + n, dtype=np.int64)}
    cols |= {f"categorical_{j + 1}": d["cats"][:, j] for j in range(N_CATEGORICAL)}
    cols |= {f"numerical_{k + 1}": d["nums"][:, k] for k in range(N_NUMERIC)}
    if p.conflict_labels:  # from a generator of their own: every other column stays as it was
        own = np.random.default_rng([p.seed, 7, first_id])
        cols |= {"buy": buy.astype(np.int8)}
        cols |= {name: (own.random(n) < 1.0 / (1.0 + np.exp(-d[f"{name}_logit"]))).astype(np.int8)
                 for name in ("like", "share")}
    if p.mixed_labels:
        cols |= _mixed_labels(d, click, truth, p, np.random.default_rng([p.seed, 11, first_id]))
    cols |= {
        "click": click.astype(np.int8),
        "conversion": (click & buy).astype(np.int8),
        "country": np.asarray(p.countries)[d["country"]],
        "day": np.full(n, day),
    }
    frame = pl.DataFrame(cols)
    if p.tags:
        offsets = pa.array(np.concatenate([[0], np.cumsum(d["tag_lengths"])]), pa.int32())
        names = pl.select(pl.concat_str(pl.lit("t"), pl.Series(d["tags"]).cast(pl.String))).to_series()
        lists = pa.ListArray.from_arrays(offsets, names.to_arrow().cast(pa.string()))
        frame = frame.with_columns(pl.Series("tags", lists))
        if p.format == "csv":
            frame = frame.with_columns(pl.col("tags").list.join("|"))
    if p.drift is not None and day in p.drift.days:
        frame = _drifted(frame, p.drift, np.random.default_rng([p.seed, 13, first_id]))
    return _corrupt(frame, rng, p.corrupt_fraction) if p.corrupt_fraction else frame


def _drifted(frame: pl.DataFrame, d: SynthDrift, rng: np.random.Generator) -> pl.DataFrame:
    """A day's rows with `d`'s drift injected (from a generator of its own)."""
    n = frame.height
    if d.shift_numeric:
        x = pl.col(d.shift_numeric)
        frame = frame.with_columns(pl.when(x != 0).then(x + d.shift_by).otherwise(x).alias(d.shift_numeric))
    if d.new_category:
        new = pl.Series(rng.random(n) < d.new_share)
        frame = frame.with_columns(pl.when(new).then(pl.lit("new-value")).otherwise(
            pl.col(d.new_category).cast(pl.String)).alias(d.new_category))
    if d.click_rate_factor:
        if d.click_rate_factor >= 1:  # raise: some non-clicks become clicks
            rate = frame["click"].mean()
            flip = rng.random(n) < (d.click_rate_factor - 1) * rate / max(1e-9, 1 - rate)
            frame = frame.with_columns((pl.col("click").cast(pl.Boolean) | pl.Series(flip)).cast(pl.Int8).alias("click"))
        else:  # lower: some clicks (with their conversions) are dropped
            keep = pl.Series(rng.random(n) < d.click_rate_factor)
            frame = frame.with_columns((pl.col("click") * keep).cast(pl.Int8).alias("click"),
                                       (pl.col("conversion") * keep).cast(pl.Int8).alias("conversion"))
    if d.drop_column:
        frame = frame.drop(d.drop_column)
    return frame


INTENTS = ("browse", "buy", "other")


def _mixed_labels(d: dict[str, np.ndarray], click: np.ndarray, truth: GroundTruth, p: SynthParams,
                  rng: np.random.Generator) -> dict[str, object]:
    """dwell (seconds, None without a click or when lost) and intent (module docstring)."""
    n = click.size
    ctr, cvr = d["ctr_logit"] - truth.b_ctr, d["cvr_logit"] - truth.b_cvr
    dwell = np.exp(2.0 + 0.4 * cvr + 0.5 * rng.standard_normal(n)).round(2)
    kept = click & (rng.random(n) >= p.dwell_missing)
    gumbel = rng.gumbel(size=(n, 3))
    intent = np.argmax(np.stack([ctr, cvr, np.zeros(n)], axis=1) + gumbel, axis=1)
    return {"dwell": pl.Series(np.where(kept, dwell, np.nan)).fill_nan(None),
            "intent": np.asarray(INTENTS)[intent]}


# Defects a real log pipeline produces: (column, bad value). ("click", "0") is written
# on a row whose conversion is set to 1: a conversion without a click.
_DEFECTS = [("numerical_5", "abc"), ("numerical_7", "1e999"), ("numerical_9", "nan"),
            ("click", "2"), ("click", "0"), ("categorical_3", None)]


def _corrupt(frame: pl.DataFrame, rng: np.random.Generator, fraction: float) -> pl.DataFrame:
    """Give `fraction` of the rows one defect each (the touched columns become strings)."""
    n = frame.height
    kind = np.where(rng.random(n) < fraction, rng.integers(0, len(_DEFECTS), n), -1)
    exprs: dict[str, pl.Expr] = {}
    for j, (col, bad) in enumerate(_DEFECTS):
        current = exprs.get(col, pl.col(col).cast(pl.String))
        exprs[col] = pl.when(pl.Series(kind == j)).then(pl.lit(bad, pl.String)).otherwise(current)
    converted = pl.Series(kind == _DEFECTS.index(("click", "0")))
    exprs["conversion"] = pl.when(converted).then(pl.lit(1, pl.Int8)).otherwise(pl.col("conversion"))
    return frame.with_columns(e.alias(c) for c, e in exprs.items())


def generate(p: SynthParams, out_dir: Path, progress=None) -> list[Path]:
    """Write one file per day (`day=YYYY-MM-DD.csv` or `.parquet`) into out_dir.

    Deterministic for a given SynthParams. A day file written earlier from the same
    parameters is kept as it is (50M rows take minutes to write, and an unchanged file
    also lets ingest reuse its output); any other existing day file is rewritten; files of
    other days are left alone (a landing folder may already hold earlier days).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = GroundTruth(p)
    start = date.fromisoformat(p.start_day)
    # what a day's file depends on: every parameter except how many days there are (and
    # except where the config puts the files: `synth.out_dir` extends these parameters)
    made_from = p.model_dump_json(include=set(SynthParams.model_fields) - {"days"})
    paths = []
    for d in range(p.days):
        day = (start + timedelta(days=d)).isoformat()
        path = out_dir / f"day={day}.{p.format}"
        paths.append(path)
        marker = out_dir / _MARKERS / f"{path.name}.json"
        if _unchanged(path, marker, made_from):
            log.info("synth: %s is already written from these parameters", path)
            if progress is not None:
                progress(p.rows_per_day)
            continue
        marker.unlink(missing_ok=True)
        _write_day(p, truth, d, day, path, progress)
        files.write_json(marker, {"params": made_from, **_stamp(path)})
    return paths


def _stamp(path: Path) -> dict:
    """What tells a file apart from an edited copy of it, without reading it."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _unchanged(path: Path, marker: Path, made_from: str) -> bool:
    """`path` was written from `made_from` and not touched since."""
    if not (path.exists() and marker.exists()):
        return False
    try:
        written = json.loads(marker.read_text())
    except ValueError:
        return False
    return written == {"params": made_from, **_stamp(path)}


def _write_day(p: SynthParams, truth: GroundTruth, d: int, day: str, path: Path, progress) -> None:
    """Day `d` of the logs into `path`, atomically."""
    rng = np.random.default_rng([p.seed, d])
    done, writer = 0, None
    with files.atomic_file(path) as tmp, open(tmp, "wb") as fh:
        while done < p.rows_per_day:  # chunk by chunk: memory stays bounded at any size
            n = min(p.chunk_rows, p.rows_per_day - done)
            chunk = _frame(truth, rng, n, d * p.rows_per_day + done, day, p)
            if p.format == "csv":
                chunk.write_csv(fh, include_header=done == 0, float_precision=6)
            else:
                table = chunk.to_arrow()
                writer = writer or pq.ParquetWriter(fh, table.schema)
                writer.write_table(table)
            done += n
            if progress is not None:
                progress(n)
        if writer is not None:
            writer.close()
