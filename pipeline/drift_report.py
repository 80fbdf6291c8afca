"""Drift and skew reports as people read them: JSON, Markdown and two plots per comparison
(every field's distance as a share of its limit; the histograms of the fields that
drifted, reference beside current). Used by `mtlrec retrain` (each new day, in the
gate report and MLflow), `mtlrec drift` and `mtlrec skew`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mtlrec import files  # noqa: E402
from mtlrec.features.drift import DriftReport, Finding  # noqa: E402

FIELDS_SHOWN = 40  # bars of the per-field chart (the largest shares of their limits)
HISTOGRAMS_SHOWN = 6


def write(report: DriftReport, folder: Path, stem: str) -> dict[str, Path]:
    """`<stem>.json`, `<stem>.md`, `<stem>-fields.png` and (when something drifted)
    `<stem>-histograms.png` in `folder`; returns them by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md",
           "fields": folder / f"{stem}-fields.png"}
    files.write_json(out["json"], report.as_dict())
    _fields_chart(report, out["fields"])
    if any(f.histogram for f in report.drifted):
        out["histograms"] = folder / f"{stem}-histograms.png"
        _histograms(report, out["histograms"])
    files.write_text(out["markdown"], markdown(report, {k: p.name for k, p in out.items()
                                                       if p.suffix == ".png"}))
    return out


def markdown(report: DriftReport, images: dict[str, str] | None = None, level: int = 1) -> str:
    """The report's verdict, its drifted checks and its images (relative links)."""
    head = "#" * level
    drifted = report.drifted
    verdict = f"**{len(drifted)} check(s) drifted**" if drifted else "**no drift**"
    lines = [f"{head} Drift: {report.current} vs {report.reference}", "",
             f"{report.rows:,} rows vs {report.reference_rows:,} rows; "
             f"{len(report.findings)} checks: {verdict}.", ""]
    if drifted:
        lines += ["| field | role | check | value | limit | detail |", "| --- | --- | --- | ---: | ---: | --- |"]
        lines += [f"| {f.field} | {f.role} | {f.check} | {_num(f.value)} | {_num(f.limit)} | {f.detail} |"
                  for f in drifted]
        lines.append("")
    for title, name in (images or {}).items():
        lines += [f"![{title}]({name})", ""]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _ratio(f: Finding) -> float:
    if f.check == "schema":
        return 2.0
    return 0.0 if not f.limit or f.value is None else min(f.value / f.limit, 5.0)


def _fields_chart(report: DriftReport, path: Path) -> None:
    shown = sorted((f for f in report.findings if f.limit or f.check == "schema"),
                   key=lambda f: -_ratio(f))[:FIELDS_SHOWN]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(shown) + 2), 4))
    names = [f"{f.field} ({f.check})" for f in shown]
    ax.bar(range(len(shown)), [_ratio(f) for f in shown],
           color=["tab:red" if f.drifted else "tab:blue" for f in shown])
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(shown)), names, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("distance / limit (red: drifted)")
    ax.set_title(f"{report.current} vs {report.reference}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _histograms(report: DriftReport, path: Path) -> None:
    drifted = [f for f in report.drifted if f.histogram][:HISTOGRAMS_SHOWN]
    fig, axes = plt.subplots(len(drifted), 1, figsize=(8, 2.6 * len(drifted)), squeeze=False)
    for ax, f in zip(axes[:, 0], drifted):
        h = f.histogram or {}
        x = np.arange(len(h["bins"]))
        ax.bar(x - 0.2, h["reference"], 0.4, label=report.reference)
        ax.bar(x + 0.2, h["current"], 0.4, label=report.current)
        ax.set_xticks(x, [str(b)[:18] for b in h["bins"]], rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("share")
        ax.set_title(f"{f.field}: {f.check} {_num(f.value)} (limit {_num(f.limit)})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
