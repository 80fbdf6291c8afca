"""MLflow tracking: every train/evaluate stage is (part of) an MLflow run.

Embedded default: a SQLite backend (`<work_dir>/mlflow.db`) and an artifact folder
(`<work_dir>/mlartifacts`), no server to start. `MLFLOW_TRACKING_URI` switches to a
user's tracking server. Runs record the resolved config as params, the git commit and
the data manifest fingerprint as tags.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric

from mtlrec import __version__, checkout_root

_PARAM_MAX = 6000  # MLflow's limit on one param value


def tracking_uri(work_dir: str | Path) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    folder = Path(work_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def experiment_id(name: str, work_dir: str | Path) -> str:
    """The experiment's id, created on first use (local artifacts next to the database)."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (Path(work_dir).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def activate(work_dir: str | Path) -> str:
    """Point MLflow's fluent API at our tracking URI and return it.

    mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into the environment; that
    variable is the user's switch to a server, so it is put back as it was.
    """
    uri = tracking_uri(work_dir)
    user = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if user is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user
    return uri


@contextmanager
def run(work_dir: str | Path, experiment: str, run_name: str, run_id: str | None = None
        ) -> Iterator[mlflow.ActiveRun]:
    """Start (or, with run_id, continue) an MLflow run; nested under the active one if any
    (a sweep's runs under the sweep's)."""
    activate(work_dir)
    exp = experiment_id(experiment, work_dir)
    with mlflow.start_run(run_id=run_id, experiment_id=exp, run_name=run_name,
                          nested=mlflow.active_run() is not None) as active:
        yield active


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → {"a.b.c": value} with long values (lists) JSON-encoded and capped."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, name + ".")
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = text[:_PARAM_MAX]
    return out


def log_config(config: dict[str, Any]) -> None:
    params = flatten(config)
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
        mlflow.log_params(dict(items[i:i + 100]))


def git_commit() -> str:
    """The checkout's commit; an installed wheel has none and says its version instead."""
    root = checkout_root()
    if root is None:
        return f"mtlrec {__version__} (installed)"
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def log_drift(client: mlflow.MlflowClient, run_id: str, drift: dict[str, dict]) -> None:
    """Days' drift records (`pipeline.retrain`) as a run's metrics: per day, its drifted
    checks, and per reference and field the field's largest share of a limit
    (`drift.<day>.<previous|champion>.<field>`)."""
    now = int(time.time() * 1000)
    metrics = []
    for day, record in drift.items():
        metrics.append(Metric(f"drift.{day}.drifted_checks", len(record["reasons"]), now, 0))
        for key, shares in record.get("max", {}).items():
            metrics += [Metric(f"drift.{day}.{key}.{_metric_name(f)}", float(v), now, 0)
                        for f, v in shares.items()]
    for start in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start:start + 900])


def _metric_name(field: str) -> str:
    return re.sub(r"[^\w./ -]", "_", field)
