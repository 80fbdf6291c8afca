"""Differences to EW paired by seed, so that "beats EW" in a table means beyond seed noise.

Each seed shares its data order and initialisation across methods, so a method's result
minus EW's at the same seed removes most of the seed-to-seed variation. A difference
counts as beyond noise when a paired t-test rejects "no difference" at the two-sided 5%
level (needs at least 2 seeds; with one seed no claim is made).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

BASELINE = "EW"


def to_baseline(rows: list[dict], key: str, baseline: str = BASELINE) -> dict[str, dict]:
    """Per method label: the per-seed differences `row[key] − baseline row[key]` (rows of
    seeds the baseline ran at), their mean and standard deviation, and whether the paired
    t-test calls the mean non-zero. Empty when the baseline is not in the rows."""
    base = {r["seed"]: r[key] for r in rows if r["method"] == baseline and r.get(key) is not None}
    out: dict[str, dict] = {}
    for label in dict.fromkeys(r["method"] for r in rows):
        if label == baseline:
            continue
        diffs = [r[key] - base[r["seed"]] for r in rows
                 if r["method"] == label and r.get(key) is not None and r["seed"] in base]
        if not diffs:
            continue
        mean, std = float(np.mean(diffs)), float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
        beyond = False
        if len(diffs) > 1:
            beyond = bool(std == 0.0 and mean != 0.0) or bool(
                std > 0 and stats.ttest_1samp(diffs, 0.0).pvalue < 0.05)
        out[label] = {"diffs": diffs, "mean": mean, "std": std, "beyond_noise": beyond}
    return out


def cell(entry: dict | None, fmt: str = "+.2f") -> str:
    """`+0.31 ± 0.12 (3 seeds) ✓` — ✓ beyond seed noise; `–` for the baseline itself."""
    if entry is None:
        return "–"
    n = len(entry["diffs"])
    if n == 1:
        return f"{entry['mean']:{fmt}} (1 seed)"
    mark = " ✓" if entry["beyond_noise"] else ""
    return f"{entry['mean']:{fmt}} ± {entry['std']:.2f} ({n} seeds){mark}"


def verdict(summary: list[dict], key: str = "delta_m_vs_ew", baseline: str = BASELINE) -> str:
    """One plain sentence over a table's summary rows ({"method", key: a `to_baseline`
    entry or None}): which methods beat the baseline beyond seed noise, which lost to it,
    and that the rest are within noise (or that one seed allows no claim; "" when no
    method but the baseline is in the table)."""
    entries = {row["method"]: row[key] for row in summary if row.get(key) is not None}
    if not entries:
        return ""  # no method to compare with the baseline (a table of the baseline alone)
    judged = {label: e for label, e in entries.items() if len(e["diffs"]) > 1}
    if not judged:
        return f"One seed: no claim against {baseline}."
    better = [label for label, e in judged.items() if e["beyond_noise"] and e["mean"] > 0]
    worse = [label for label, e in judged.items() if e["beyond_noise"] and e["mean"] < 0]
    within = [label for label in judged if label not in better + worse]
    parts = [f"better than {baseline} beyond seed noise: {', '.join(better) or 'none'}",
             f"worse: {', '.join(worse) or 'none'}"]
    if within:
        parts.append(f"within noise: {', '.join(within)}")
    sentence = "; ".join(parts)
    return sentence[0].upper() + sentence[1:] + "."
