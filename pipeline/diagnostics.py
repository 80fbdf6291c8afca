"""Conflict diagnostics of a training run: logged to MLflow as they are sampled, kept as
JSON lines in the run folder, and plotted into the evaluation report.

The step samples every `method.diagnostics_every` steps, and at least 10 times an epoch
(training/mtl/step.py): pairwise
gradient cosine and magnitude similarity, and each part's own state — AdaTask's rAU
histograms, the grouped updates' affinity and groups, DTJS's φ and α, SuperLoss σ
histograms, learnt task weights (UW, FAMO, GradNorm).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402


class DiagnosticsLog:
    """The trainer's `on_diagnostics` callback for one model of a run."""

    def __init__(self, path: Path, tasks: list[str], prefix: str = "") -> None:
        self.path, self.tasks, self.prefix = path, tasks, prefix
        if not path.exists():  # a resumed run appends
            path.write_text(json.dumps({"tasks": tasks}) + "\n")

    def __call__(self, record: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        mlflow.log_metrics(self._scalars(record), step=record["step"])

    def _scalars(self, record: dict) -> dict[str, float]:
        out = {}
        for i, j, pair in _pairs(self.tasks):
            out[f"grad_cosine.{pair}"] = record["cosine"][i][j]
            out[f"grad_magnitude.{pair}"] = record["magnitude"][i][j]
        for key in ("dtjs_phi", "uw_weights", "famo_weights", "gradnorm_weights"):
            out |= {f"{key}.{name}": value for name, value in zip(self.tasks, record.get(key, []))}
        if "dtjs_alpha" in record:
            for part, row in zip("ab", record["dtjs_alpha"]):
                out |= {f"dtjs_alpha_{part}.{t}": v for t, v in zip(self.tasks, row)}
        if "groups" in record:
            out["group_count"] = len(record["groups"])
        return {self.prefix + k: float(v) for k, v in out.items()}


def read(path: Path) -> tuple[list[str], list[dict]]:
    """(tasks, records by step); a step sampled again after a resume keeps its last record."""
    lines = path.read_text().splitlines()
    by_step = {r["step"]: r for r in map(json.loads, lines[1:])}
    return json.loads(lines[0])["tasks"], [by_step[s] for s in sorted(by_step)]


def plot(path: Path, out_dir: Path) -> dict[str, str]:
    """PNGs of one diagnostics file → {title: file name} (nothing when no samples)."""
    tasks, records = read(path)
    if not records:
        return {}
    stem, out = path.stem, {}
    if len(tasks) > 1:  # a single task (an STL model) has no pair to conflict
        out[f"Gradient conflict ({stem})"] = f"{stem}-conflict.png"
        _conflict(out_dir / out[f"Gradient conflict ({stem})"], tasks, records)
    last = records[-1]
    extra = [("adatask_rau", "AdaTask task dominance rAU", _rau),
             ("affinity", "Inter-task affinity and groups", _affinity),
             ("dtjs_phi", "DTJS φ and α", _dtjs),
             ("superloss_sigma", "SuperLoss weights σ", _sigma)]
    for key, title, draw in extra:
        if key in last:
            name = f"{stem}-{key}.png"
            draw(out_dir / name, tasks, records)
            out[f"{title} ({stem})"] = name
    return out


def _pairs(tasks: list[str]) -> list[tuple[int, int, str]]:
    """(i, j, "a.vs.b") for every pair of tasks (also the MLflow metric suffix)."""
    return [(i, j, f"{tasks[i]}.vs.{tasks[j]}") for i in range(len(tasks)) for j in range(i + 1, len(tasks))]


def _conflict(path: Path, tasks: list[str], records: list[dict]) -> None:
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, j, label in _pairs(tasks):
        axes[0].plot(steps, [r["cosine"][i][j] for r in records], label=label)
        axes[1].plot(steps, [r["magnitude"][i][j] for r in records], label=label)
    axes[0].axhline(0, color="grey", lw=0.5)
    axes[0].set(title="gradient cosine (< 0: conflict)", xlabel="step")
    axes[1].set(title="magnitude similarity (1: equal norms)", xlabel="step", ylim=(0, 1.05))
    for ax in axes[:2]:
        if len(tasks) <= 6:
            ax.legend(fontsize=7)
    mean_cos = np.mean([r["cosine"] for r in records], axis=0)
    _heatmap(axes[2], mean_cos, tasks, "mean gradient cosine", -1, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _heatmap(ax, matrix: np.ndarray, names: list[str], title: str, vmin=None, vmax=None) -> None:
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(title)
    plt.colorbar(im, ax=ax)


def _rau(path: Path, tasks: list[str], records: list[dict]) -> None:
    hist = records[-1]["adatask_rau"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, h in zip(tasks, hist):
        edges = np.array(h["edges"])
        ax.stairs(np.array(h["counts"]) / max(sum(h["counts"]), 1), edges, label=name)
    ax.axvspan(0.4, 0.6, color="grey", alpha=0.15, label="balanced")
    ax.set(title=f"rAU of the shared parameters (step {records[-1]['step']})",
           xlabel="task's share of the squared updates", ylabel="fraction of parameters")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _affinity(path: Path, tasks: list[str], records: list[dict]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    a = np.array(records[-1]["affinity"])
    limit = max(np.abs(a).max(), 1e-12)
    _heatmap(axes[0], a, tasks, f"affinity source→target (step {records[-1]['step']})", -limit, limit)
    # every regrouping (`group_changes`, recorded between samples) and the samples
    counts = {r["step"]: len(r["groups"]) for r in records}
    counts |= {c["step"]: len(c["groups"]) for r in records for c in r.get("group_changes", [])}
    points = sorted(counts.items())
    axes[1].step([s for s, _ in points], [n for _, n in points], where="post")
    axes[1].set(title="number of task groups", xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _dtjs(path: Path, tasks: list[str], records: list[dict]) -> None:
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    # α after every outer update where recorded (`dtjs_alpha_updates`), else at the samples
    updates = [u for r in records for u in r.get("dtjs_alpha_updates", [])] or records
    alpha_steps = [u["step"] for u in updates]
    for k, name in enumerate(tasks):
        axes[0].plot(steps, [r["dtjs_phi"][k] for r in records], label=name)
        axes[1].plot(alpha_steps, [u["dtjs_alpha"][0][k] for u in updates], label=f"a ({name})")
        axes[1].plot(alpha_steps, [u["dtjs_alpha"][1][k] for u in updates], "--", label=f"b ({name})")
    axes[0].set(title="inter-task weight φ", xlabel="step")
    axes[1].set(title=f"learnt α ({len(updates)} updates)", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sigma(path: Path, tasks: list[str], records: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for record, style in ((records[0], "--"), (records[-1], "-")):
        for name, h in zip(tasks, record["superloss_sigma"]):
            counts = np.array(h["counts"]) / max(sum(h["counts"]), 1)
            ax.stairs(counts, np.array(h["edges"]), linestyle=style, label=f"{name}, step {record['step']}")
    ax.set(title="SuperLoss per-sample weights σ", xlabel="σ", ylabel="fraction of samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
