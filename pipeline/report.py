"""The evaluation report: plots (training curves, conflict diagnostics; ROC and calibration
for binary tasks) + Markdown with the per-task metrics of the run's task kind."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from mtlrec.pipeline import diagnostics  # noqa: E402
from mtlrec.pipeline.config import Config  # noqa: E402
from mtlrec.pipeline.run_folder import MULTI_TASK  # noqa: E402
from mtlrec.training.metrics import sigmoid  # noqa: E402
from mtlrec.training.tasks import TaskSet, selection_of  # noqa: E402


def plots(folder: Path, labels: np.ndarray, outputs: np.ndarray, history: dict[str, list[dict]],
          kind: TaskSet, diagnostics_files: list[Path]) -> dict[str, str]:
    """Write the PNGs into folder (the run's evaluation folder); returns {title: file name}.
    ROC and calibration of the binary tasks (their labelled rows, calibrated logits); the
    run's conflict diagnostics are plotted too."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"Training curves": "curves.png"}
    _curves(folder / out["Training curves"], history)
    scores = kind.binary_scores(labels, outputs)
    if scores:
        out |= {"ROC per task": "roc.png", "Calibration": "calibration.png"}
        _roc(folder / out["ROC per task"], scores)
        _calibration(folder / out["Calibration"], scores)
    for path in diagnostics_files:
        out |= diagnostics.plot(path, folder)
    return out


def _roc(path: Path, scores: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for task, y, z in scores:
        y, z = y[np.isfinite(y)], z[np.isfinite(y)]
        if y.size == 0 or y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, z)
        ax.plot(fpr, tpr, label=task)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _curves(path: Path, history: dict[str, list[dict]]) -> None:
    """Training loss and validation score per epoch of each model of the run (an STL run's
    models of mixed kinds each follow their own score: the legend names it)."""
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 4))
    keys = set()
    for group, rows in history.items():
        epochs = [r["epoch"] for r in rows]
        label = "multi-task" if group == MULTI_TASK else group
        score_key, _ = selection_of(rows[0])
        keys.add(score_key)
        loss_ax.plot(epochs, [r["train_loss"] for r in rows], marker="o", label=label)
        score_ax.plot(epochs, [r[score_key] for r in rows], marker="o",
                      label=label if len(history) == 1 else f"{label} ({score_key.removeprefix('valid_mean_')})")
    score_key = keys.pop() if len(keys) == 1 else "valid score"
    loss_ax.set(xlabel="epoch", ylabel="train loss (sum over tasks)", title="Training loss")
    score_ax.set(xlabel="epoch", ylabel=score_key.replace("_", " "), title="Validation")
    loss_ax.legend()
    score_ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _calibration(path: Path, scores: list[tuple[str, np.ndarray, np.ndarray]], bins: int = 10) -> None:
    """Reliability diagram on prediction deciles (log-log: rates are small for CTCVR)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = 1.0, 0.0
    for task, y, z in scores:
        y, z = y[np.isfinite(y)], z[np.isfinite(y)]
        if y.size == 0:
            continue
        p = sigmoid(z)
        edges = np.quantile(p, np.linspace(0, 1, bins + 1))
        which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
        mean_p = np.bincount(which, p, bins) / np.maximum(np.bincount(which, minlength=bins), 1)
        rate = np.bincount(which, y, bins) / np.maximum(np.bincount(which, minlength=bins), 1)
        keep = (mean_p > 0) & (rate > 0)
        ax.plot(mean_p[keep], rate[keep], marker="o", label=task)
        if keep.any():
            lo, hi = min(lo, mean_p[keep].min(), rate[keep].min()), max(hi, mean_p[keep].max(), rate[keep].max())
    ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="mean prediction", ylabel="observed rate",
           title="Calibration (test, prediction deciles)")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def markdown(cfg: Config, run_name: str, metrics: dict, plots: dict[str, str]) -> str:
    metric, tasks = metrics["metric"], metrics["tasks"]
    columns = list(dict.fromkeys(c for m in tasks.values() for c in m))  # mixed kinds: the union
    units, stl = metrics.get("units", {}), metrics.get("stl")
    lines = [
        f"# Evaluation: {run_name}", "",
        f"data `{cfg.data.name}`, model `{cfg.model.arch}`, method `{cfg.method.name}`, "
        f"seed {cfg.seed}; {metrics['rows']:,} test rows.", "",
        "| task | " + " | ".join(columns) + (f" | STL {metric}" if stl else "") + (" | unit |" if units else " |"),
        "| --- | " + " | ".join("---:" for _ in columns) + (" | ---:" if stl else "") + (" | --- |" if units else " |"),
    ]
    for task, m in tasks.items():
        cells = [f"{m[c]:.4g}" if c in m else "–" for c in columns] + ([f"{stl[task]:.4g}"] if stl else [])
        lines.append(f"| {task} | " + " | ".join(cells) + (f" | {units.get(task, '')} |" if units else " |"))
    means = [f"{name} **{value:.4f}**" for name, value in metrics.items() if name.startswith("mean_")]
    lines += ["", "Mean over tasks: " + ", ".join(means) + "."]
    if "delta_m_pct" in metrics:
        lines.append(f"Δm% vs STL (test {metric}, DTJS Eq. 3-12): **{metrics['delta_m_pct']:+.3f}%**.")
    else:
        lines.append(f"Δm%: no evaluated STL run for this data and seed at `{cfg.evaluate.stl_run}` "
                     "(train and evaluate `method=stl` first).")
    if "group_auc" in metrics:
        tasks = list(next(iter(metrics["group_auc"].values()), {}))  # the binary tasks
        lines += ["", "## AUC per group", "", "| group | " + " | ".join(tasks) + " |",
                  "| --- | " + " | ".join("---:" for _ in tasks) + " |"]
        for group, aucs in metrics["group_auc"].items():
            lines.append(f"| {group} | " + " | ".join(f"{aucs[t]:.4f}" for t in tasks) + " |")
    for title, file in plots.items():
        lines += ["", f"## {title}", "", f"![{title}]({file})"]
    return "\n".join(lines) + "\n"
