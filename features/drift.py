"""Drift between two slices' statistics (`features.stats`): a day against the day before,
a day against the champion's training window, served rows against it (skew).

Checks per field, each against the data conf's limits (`spec.DriftSpec`, None = off):
- `js`: the Jensen-Shannon distance (base 2, in [0, 1]; scipy's `jensenshannon`) of a
  numeric field's or regression label's distribution. Both quantile sketches are
  re-binned on the reference's: 20 bins of equal reference mass between its 5 % quantiles,
  plus one below its minimum and one above its maximum (values moving out of the range
  count), with the CDF read off each sketch (linear between quantiles, steps at atoms).
- `linf`: the L-infinity distance of the relative frequencies of a categorical field's
  values (a list field's elements, a multiclass label's classes) over the values in either
  top-k; a value outside one side's top-k counts as 0 there (at most its k-th frequency).
- `label_rate`: the relative shift |p - p_ref| / p_ref of a binary label's positive rate.
Each of these three is flagged when it passes its limit *and* is beyond sampling noise at
`min_z` standard errors (a two-proportion z with continuity correction for rates and for
the L-infinity's value; for
Jensen-Shannon the χ² null distribution at the same level: `js_noise`), so a small slice
(a few hundred rows) is not flagged for its noise.
- `missing`: the change of a field's share of missing values.
- `oov`: the share of a categorical field's values outside the reference vocabulary.
- `schema`: a column added, removed, or stored with another type.
TFDV uses the same two distances (L-infinity and Jensen-Shannon) and leaves the limits to
the user; Evidently's default for Jensen-Shannon is 0.1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as scipy_stats

from mtlrec.features.spec import DataSpec
from mtlrec.features.stats import LEVELS, SliceStats

BINS = 20  # equal reference mass between its 5 % quantiles
SHOWN = 12  # categories shown in a drifted field's histogram


@dataclass(frozen=True)
class Finding:
    """One check of one field: its value, the limit and whether it drifted; `histogram`
    (bins, current, reference shares) for the report's plots."""

    field: str
    role: str  # feature | label | column
    check: str  # js | linf | label_rate | missing | oov | schema
    value: float | None
    limit: float | None
    drifted: bool
    detail: str = ""
    histogram: dict | None = None


@dataclass(frozen=True)
class DriftReport:
    current: str  # what was compared, e.g. "day 2026-11-05"
    reference: str  # with what, e.g. "day 2026-11-04"
    rows: int
    reference_rows: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def drifted(self) -> list[Finding]:
        return [f for f in self.findings if f.drifted]

    def reasons(self) -> list[str]:
        """One line per drifted check, naming field and kind."""
        return [f"{f.field}: schema ({f.detail})" if f.check == "schema" else
                f"{f.field}: {f.check} {_shown(f.value)} > {_shown(f.limit)}" + (f" ({f.detail})" if f.detail else "")
                for f in self.drifted]

    def as_dict(self) -> dict:
        return asdict(self) | {"drifted": [f"{f.field}:{f.check}" for f in self.drifted]}


def against_day_and_champion(
    day: str, current: SliceStats, spec: DataSpec, *, previous: tuple[str, SliceStats] | None,
    champion: tuple[str, SliceStats | None] | None, labels: bool = True,
) -> dict[str, DriftReport]:
    """A day against the day before it ("previous": columns and their types) and against the
    champion's training window ("champion": column names only, since that window was read
    from a store where every value is text), those of them there are."""
    out = {}
    if previous is not None:
        out["previous"] = compare(current, previous[1], spec, names=(f"day {day}", f"day {previous[0]}"),
                                  labels=labels)
    if champion is not None and champion[1] is not None:
        out["champion"] = compare(current, champion[1], spec, labels=labels, types=False,
                                  names=(f"day {day}", f"champion v{champion[0]} training window"))
    return out


def compare(current: SliceStats, reference: SliceStats, spec: DataSpec, *, names: tuple[str, str],
            labels: bool = True, types: bool = True) -> DriftReport:
    """Every check of every field of `spec` on `current` against `reference`; `labels=False`
    leaves the labels out (served rows have none; a day whose labels are not complete);
    `types=False` compares column names only (a reference read from another format, e.g.
    a retrain job's window from the store, where every value is text)."""
    findings = schema_changes(current.columns, reference.columns, types) if spec.drift.schema_changes else []
    for name, ref in reference.fields.items():
        cur = current.fields.get(name)
        if cur is None or (ref["role"] == "label" and not labels):
            continue
        limits = spec.drift.limits(name)
        findings += _missing(name, cur, ref, limits.missing, (current.rows, reference.rows))
        if ref["kind"] == "numeric":
            findings += _numeric(name, cur, ref, limits.js, spec.drift.min_z)
        elif ref["kind"] == "binary":
            findings += _rate(name, cur, ref, limits.label_rate, spec.drift.min_z)
        else:
            findings += _categorical(name, cur, ref, limits.linf, spec.drift.min_z)
            if limits.oov is not None and cur.get("oov") is not None and cur["count"]:
                share = cur["oov"] / cur["count"]
                findings.append(Finding(name, ref["role"], "oov", share, limits.oov, share > limits.oov))
    return DriftReport(names[0], names[1], current.rows, reference.rows, findings)


def schema_changes(current: dict[str, str], reference: dict[str, str], types: bool = True) -> list[Finding]:
    """Columns added, removed or (with `types`) retyped; nothing when either side has no
    record of its columns."""
    if not current or not reference:
        return []
    out = [Finding(c, "column", "schema", None, None, True, "column removed")
           for c in reference if c not in current]
    out += [Finding(c, "column", "schema", None, None, True, "column added")
            for c in current if c not in reference]
    out += [Finding(c, "column", "schema", None, None, True, f"type changed: {reference[c]} → {current[c]}")
            for c in current if types and c in reference and current[c] != reference[c]]
    return out


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """The Jensen-Shannon distance of two histograms in base 2, in [0, 1] (each is
    normalised first): sqrt((KL(p‖m) + KL(q‖m)) / 2), m = (p + q) / 2."""
    p = np.asarray(p, np.float64) / np.sum(p)
    q = np.asarray(q, np.float64) / np.sum(q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return math.sqrt(max(0.0, 0.5 * (kl(p) + kl(q))))


def linf_distance(p: dict[str, float], q: dict[str, float]) -> float:
    """max over values of |p(v) − q(v)| (a value absent from one side is 0 there)."""
    return max((abs(p.get(v, 0.0) - q.get(v, 0.0)) for v in set(p) | set(q)), default=0.0)


def cdf(quantiles: list[float], x: np.ndarray) -> np.ndarray:
    """P(X ≤ x) read off a quantile sketch at LEVELS: linear between distinct quantiles,
    a step at a value several levels share (an atom, e.g. the zeros of a sparse field)."""
    q = np.asarray(quantiles, np.float64)
    levels = np.asarray(LEVELS)
    x = np.asarray(x, np.float64)
    i = np.searchsorted(q, x, side="right") - 1  # the last level at or below x
    inside = (i >= 0) & (i < len(q) - 1)
    j = np.clip(i, 0, len(q) - 2)
    lo, hi = q[j], q[j + 1]
    width = np.where(hi > lo, hi - lo, 1.0)
    step = levels[1] - levels[0]
    between = levels[j] + np.where(hi > lo, (x - lo) / width, 0.0) * step
    return np.where(i < 0, 0.0, np.where(inside, between, 1.0))


def histogram(current: list[float], reference: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin edges from the reference's sketch and both distributions' shares of each bin:
    (−∞, min], then BINS bins of equal reference mass up to its max, then (max, ∞)."""
    ref = np.asarray(reference, np.float64)
    edges = np.unique(ref[np.linspace(0, len(ref) - 1, BINS + 1).round().astype(int)])

    def shares(sketch: list[float]) -> np.ndarray:
        return np.diff(np.concatenate([[0.0], cdf(sketch, edges), [1.0]])).clip(0.0)

    return edges, shares(current), shares(reference)


SKETCH_JS = 0.05  # the distance the sketches' 1 % resolution alone gives (measured; see js_noise)


def js_noise(bins: int, n: int, m: int, min_z: float) -> float:
    """The Jensen-Shannon distance two samples of n and m values of one distribution exceed
    with the two-sided probability of a z-score of `min_z`: 8·ln 2·JS² ≈ χ²(bins − 1)·
    (1/n + 1/m) for multinomial samples, plus in quadrature what re-binning two 101-level
    sketches adds (a bin's share is known to about half a level: ≈ 0.05 on 22 bins), so
    small slices are not flagged for their noise; on large ones the limit decides."""
    alpha = 2 * scipy_stats.norm.sf(min_z)
    sampling = scipy_stats.chi2.isf(alpha, max(1, bins - 1)) * (1 / n + 1 / m) / (8 * math.log(2))
    return math.sqrt(sampling + SKETCH_JS**2)


def _numeric(name: str, cur: dict, ref: dict, limit: float | None, min_z: float) -> list[Finding]:
    if limit is None or not cur.get("quantiles") or not ref.get("quantiles"):
        return []
    edges, p, q = histogram(cur["quantiles"], ref["quantiles"])
    value = js_distance(p, q)
    noise = js_noise(int(np.count_nonzero((p > 0) | (q > 0))), cur.get("sample") or cur["count"],
                     ref.get("sample") or ref["count"], min_z)
    labels = [f"≤ {edges[0]:.4g}"] + [f"({a:.4g}, {b:.4g}]" for a, b in zip(edges[:-1], edges[1:])] + \
        [f"> {edges[-1]:.4g}"]
    detail = f"mean {_shown(ref.get('mean'))} → {_shown(cur.get('mean'))}; noise {noise:.3g}"
    return [Finding(name, ref["role"], "js", value, limit, value > max(limit, noise), detail,
                    {"bins": labels, "current": p.tolist(), "reference": q.tolist()})]


def _categorical(name: str, cur: dict, ref: dict, limit: float | None, min_z: float) -> list[Finding]:
    if limit is None or not cur["count"] or not ref["count"]:
        return []
    p = {v: n / cur["count"] for v, n in cur["top"]}
    q = {v: n / ref["count"] for v, n in ref["top"]}
    value = linf_distance(p, q)
    shown = sorted(set(p) | set(q), key=lambda v: -abs(p.get(v, 0.0) - q.get(v, 0.0)))[:SHOWN]
    worst = shown[0] if shown else None
    detail = "" if worst is None else \
        f"'{worst}' {100 * q.get(worst, 0.0):.1f}% → {100 * p.get(worst, 0.0):.1f}%"
    pooled = 0.0 if worst is None else \
        (p.get(worst, 0.0) * cur["count"] + q.get(worst, 0.0) * ref["count"]) / (cur["count"] + ref["count"])
    noise = _rate_noise(pooled, cur["count"], ref["count"], min_z)
    return [Finding(name, ref["role"], "linf", value, limit, value > max(limit, noise), detail,
                    {"bins": shown, "current": [p.get(v, 0.0) for v in shown],
                     "reference": [q.get(v, 0.0) for v in shown]})]


def _rate(name: str, cur: dict, ref: dict, limit: float | None, min_z: float) -> list[Finding]:
    if limit is None or not cur["count"] or not ref["count"]:
        return []
    p, p0 = cur["positives"] / cur["count"], ref["positives"] / ref["count"]
    pooled = (cur["positives"] + ref["positives"]) / (cur["count"] + ref["count"])
    noise = _rate_noise(pooled, cur["count"], ref["count"], min_z)
    value = abs(p - p0) / p0 if p0 > 0 else (math.inf if p > 0 else 0.0)
    detail = f"rate {p0:.4g} → {p:.4g}; noise ±{noise:.3g}"
    return [Finding(name, ref["role"], "label_rate", value, limit, value > limit and abs(p - p0) >= noise, detail)]


def _rate_noise(pooled: float, n: int, m: int, min_z: float) -> float:
    """The difference of two shares of n and m rows that is `min_z` standard errors (a
    pooled two-proportion z) plus Yates' continuity correction ½(1/n + 1/m): without it a
    single row of a new value in a 7-row slice counts as significant."""
    return min_z * math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m)) + 0.5 * (1 / n + 1 / m)


def _missing(name: str, cur: dict, ref: dict, limit: float | None, rows: tuple[int, int]) -> list[Finding]:
    if limit is None:
        return []
    now, before = cur["missing"] / max(1, rows[0]), ref["missing"] / max(1, rows[1])
    value = abs(now - before)
    return [Finding(name, ref["role"], "missing", value, limit, value > limit,
                    f"{100 * before:.1f}% → {100 * now:.1f}% missing")]


def _shown(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"
