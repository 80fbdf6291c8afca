"""`mtlrec sweep <name|file.yaml> [overrides]`: train a grid of configurations, choose on
validation, then train the winner at the final seeds and report its test metrics.

A sweep file (`conf/sweep/<name>.yaml`, or any path) states the base overrides, the grid
(config key → values) and the seeds. Every grid point × seed is an ordinary training run
in its own run folder under `<work_dir>/sweeps/<name>/`, a nested MLflow run under the
sweep's parent run; the test split is read only for the winner's final runs. Click and
conversion logs are ingested into the sweep's own features folder (once; again only when a
point changes the data settings). A sweep
stopped half-way and started again skips the finished runs (same configuration) and
resumes an interrupted one from its checkpoint, in the same parent run. Writes
`reports/sweep-<name>.json` and `.md`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any

import mlflow
import yaml
from pydantic import Field

from mtlrec import CONF_DIR, files
from mtlrec.configbase import Strict
from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline import tracking
from mtlrec.pipeline.benchmarks.measure import machine, write_report
from mtlrec.pipeline.evaluate import evaluate_run
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.pipeline.targets import ingest_logs
from mtlrec.pipeline.train import train_run
from mtlrec.training.tasks import SELECTION_KEYS as HIGHER_IS_BETTER

log = logging.getLogger(__name__)


class SweepSpec(Strict):
    name: str = Field(pattern=r"^[\w.-]+$")
    description: str = ""
    base: list[str] = Field(default_factory=list, description="overrides of every run")
    grid: dict[str, list[Any]] = Field(min_length=1, description="config key → values tried")
    seeds: list[int] = Field([0], min_length=1, description="seeds of every grid point")
    final_seeds: list[int] = Field([0, 1, 2], min_length=1,
                                   description="seeds the winner is trained at and tested")


def load_spec(name: str) -> SweepSpec:
    """`conf/sweep/<name>.yaml` or a path to a sweep file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONF_DIR / "sweep" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
        raise config_mod.ConfigError(f"mtlrec sweep: no sweep file {path}; choose one of {known} "
                                     "or give a path to a .yaml file")
    try:
        return SweepSpec.model_validate(yaml.safe_load(path.read_text()))
    except ValueError as exc:
        raise config_mod.ConfigError(f"sweep file {path}: {exc}") from exc


def points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the file's order."""
    keys = list(spec.grid)
    return [dict(zip(keys, values)) for values in itertools.product(*spec.grid.values())]


def point_id(point: dict[str, Any]) -> str:
    """A stable short name of a grid point (its run folders are named by it)."""
    return hashlib.sha1(json.dumps(point, sort_keys=True).encode()).hexdigest()[:8]


def _override(key: str, value: Any) -> str:
    text = json.dumps(value).replace(" ", "") if isinstance(value, (list, dict)) else str(value)
    return f"{key}={text}"


def run(name: str, overrides: list[str]) -> dict:
    spec = load_spec(name)
    first = config_mod.load([*spec.base, *overrides])
    folder = Path(first.paths.work_dir) / "sweeps" / spec.name
    # its own ingested data: another split of the same data set elsewhere stays as it is
    base = [*spec.base, f"paths.features={folder / 'features'}", *overrides]
    state_file = folder / "sweep.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    with tracking.run(first.paths.work_dir, first.data.name, f"sweep-{spec.name}",
                      state.get("run_id")) as parent:
        files.write_json(state_file, {"run_id": parent.info.run_id})
        mlflow.set_tags({"stage": "sweep", "sweep": spec.name, "git_commit": tracking.git_commit()})
        grid = []
        for point in points(spec):
            runs = [_train(base, point, seed, folder) for seed in spec.seeds]
            scores = [r["valid_score"] for r in runs]
            grid.append({"id": point_id(point), "point": point, "valid_scores": scores,
                         "valid_score": sum(scores) / len(scores), "valid_key": runs[0]["valid_key"]})
            log.info("sweep %s: %s → validation %.5f", spec.name, point, grid[-1]["valid_score"])
        sign = 1.0 if HIGHER_IS_BETTER[grid[0]["valid_key"]] else -1.0
        best = max(grid, key=lambda g: sign * g["valid_score"])
        finals = [_train(base, best["point"], seed, folder, test=True) for seed in spec.final_seeds]
        result = {"machine": machine(), "sweep": spec.model_dump(), "overrides": overrides,
                  "grid": grid, "best": best, "finals": finals, "parent_run_id": parent.info.run_id}
        mlflow.log_params({f"best.{k}": str(v) for k, v in best["point"].items()})
        mlflow.log_metrics({"best_valid_score": best["valid_score"]}
                           | _test_means(finals))
    js, md = write_report(Path(first.paths.reports), f"sweep-{spec.name}", result, _markdown(result))
    print(f"sweep {spec.name}: best {best['point']} (validation {best['valid_score']:.5f}); "
          f"wrote {js} and {md}")
    return result


def _train(base: list[str], point: dict[str, Any], seed: int, folder: Path, test: bool = False) -> dict:
    """One run of a grid point: trained (or resumed, or reused when finished with the
    same configuration); its best validation score, and with `test` its test metrics."""
    run_dir = folder / f"{point_id(point)}-seed{seed}"
    cfg = config_mod.load([*base, *(_override(k, v) for k, v in point.items()), f"seed={seed}",
                           f"paths.run_dir={run_dir}"])
    if cfg.data.kind == "logs":
        ingest_logs(cfg)  # reused while the data and its settings are unchanged
    run = RunFolder(cfg.paths.run_dir)
    state = run.state()
    same = state is not None and (config_mod.training_settings(run.config_text())
                                  == config_mod.training_settings(config_mod.to_yaml(cfg)))
    if not (same and state.status == "trained"):
        force = not (same and state.status == "running")
        train_run(cfg.model_copy(update={"train": cfg.train.model_copy(update={"force": force})}))
    key, score = _best_valid(run)
    out = {"seed": seed, "run_dir": str(run_dir), "valid_key": key, "valid_score": score}
    if test:
        out["test"] = evaluate_run(cfg)
    return out


def _best_valid(run: RunFolder) -> tuple[str, float]:
    """The validation score's name and its best value over the epochs (the mean over tasks
    of the kind's selection metric; STL: the mean over the per-task models' best)."""
    bests = []
    for history in run.history().values():
        key = next(k for k in history[0] if k in HIGHER_IS_BETTER)
        values = [row[key] for row in history if math.isfinite(row[key])]
        bests.append(max(values) if HIGHER_IS_BETTER[key] else min(values))
    return key, sum(bests) / len(bests)


def _test_metrics(test: dict) -> dict[str, float]:
    """One final run's test metrics: the mean over tasks and each task's selection metric
    (`income.auc`), not counts such as `rows`."""
    headline = test.get("headline") or {t: test["metric"] for t in test["tasks"]}  # runs before task kinds
    out = {k: v for k, v in test.items() if k.startswith("mean_") and isinstance(v, (int, float))}
    return out | {f"{task}.{headline[task]}": values[headline[task]] for task, values in test["tasks"].items()}


def _test_means(finals: list[dict]) -> dict[str, float]:
    per_run = [_test_metrics(f["test"]) for f in finals]
    return {f"test_{k}": sum(m[k] for m in per_run) / len(per_run) for k in per_run[0]}


def _markdown(r: dict) -> str:
    spec, best = r["sweep"], r["best"]
    keys = list(spec["grid"])
    lines = [f"# Sweep `{spec['name']}` (`mtlrec sweep {spec['name']}`)", "", spec["description"], "",
             f"Base: `{' '.join(spec['base'] + r['overrides'])}`. Each grid point trained at seeds "
             f"{spec['seeds']} and chosen on the validation split only; the winner then trained at "
             f"seeds {spec['final_seeds']} and evaluated on test.", "",
             "| " + " | ".join(keys) + f" | {best['valid_key']} | |", "| " + " | ".join("---" for _ in keys) + " | ---: | --- |"]
    sign = -1.0 if HIGHER_IS_BETTER[best["valid_key"]] else 1.0
    for g in sorted(r["grid"], key=lambda g: sign * g["valid_score"]):
        mark = "**chosen**" if g["id"] == best["id"] else ""
        lines.append("| " + " | ".join(str(g["point"][k]) for k in keys) + f" | {g['valid_score']:.5f} | {mark} |")
    lines += ["", f"Winner on test, seeds {spec['final_seeds']}:", ""]
    per_run = [_test_metrics(f["test"]) for f in r["finals"]]
    for key, mean in _test_means(r["finals"]).items():
        values = [m[key.removeprefix("test_")] for m in per_run]
        spread = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        lines.append(f"- {key.removeprefix('test_')}: {mean:.4f} ± {spread:.4f} (per seed: "
                     + ", ".join(f"{v:.4f}" for v in values) + ")")
    lines += ["", f"Machine: {r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, {r['machine']['time']}.", ""]
    return "\n".join(lines)
