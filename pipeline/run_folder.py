"""The run folder: one type owns the files of a training run, so train, evaluate, export,
retrain and the benchmarks agree on them and no other module spells a run file's name.

```
<run_dir>/
  run.json                  state: MLflow run id, status (running | trained), features folder
  config.yaml               the resolved config of the run
  model_config.json         the model's hyper-parameters
  history.json              per model: one row per epoch (losses, validation metrics)
  model.pt | model-<task>.pt  best weights: the multi-task model | one model per task (STL)
  checkpoint-<model>.pt     the resume point of each model
  diagnostics-<model>.jsonl conflict diagnostics sampled during training
  bench.json                a benchmark's training wall time
  evaluation/               metrics.json, report.md and its plots
  bundle/                   the exported ONNX bundle
  gate/                     gate.json, gate.md: the promotion gate's verdict
```

A model is named by the tasks it trains: `all` for the multi-task model, the task's name
for each STL model. The run's MLflow artifacts use the same names, the weights under
`model/`; `download` rebuilds a run folder from them (the champion a retrain warm-starts
from).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import mlflow
import torch
from torch import nn

from mtlrec import files
from mtlrec.features.errors import DataError
from mtlrec.models.config import ModelConfig, load_model_config
from mtlrec.training.tasks import selection_of

#: the model of a multi-task run (an STL run has one model per task, named after it)
MULTI_TASK = "all"
_WEIGHTS_ARTIFACTS = "model"  # MLflow artifact folder of the best weights
_CHECKPOINT_ARTIFACTS = "checkpoint"
_FEATURES_ARTIFACTS = "features"


def model_groups(tasks: list[str], single_task: bool) -> dict[str, list[int]]:
    """Which task columns each model of a run trains on: all together, or one per model."""
    if single_task:
        return {t: [k] for k, t in enumerate(tasks)}
    return {MULTI_TASK: list(range(len(tasks)))}


@dataclass(frozen=True)
class RunState:
    """run.json: what a later stage needs to pick the run up."""

    run_id: str
    status: Literal["running", "trained", "failed"]
    features: str | None = None  # the model-ready features folder it trained on (logs data)
    registered_version: str | None = None  # set on a champion downloaded from the registry
    reason: str | None = None  # why a failed run stopped


class RunFolder:
    """One training run's folder (see the module docstring for its layout)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ state

    @property
    def _state_file(self) -> Path:
        return self.path / "run.json"

    def state(self) -> RunState | None:
        if not self._state_file.is_file():
            return None
        try:
            saved = json.loads(self._state_file.read_text())
            return RunState(**{k: v for k, v in saved.items() if k in RunState.__dataclass_fields__})
        except (ValueError, TypeError) as exc:
            raise DataError(f"{self._state_file} is unreadable ({exc}): pass train.force=true to "
                            "train this run again from scratch") from None

    def is_trained(self) -> bool:
        try:
            state = self.state()
        except DataError:  # unreadable: not a finished run; `trained()` says why
            return False
        return state is not None and state.status == "trained"

    def trained(self) -> RunState:
        """The state of a finished run, or a DataError saying what to run first."""
        state = self.state()
        if state is not None and state.status == "failed":
            raise DataError(f"{self.path}: the run failed ({state.reason})")
        if state is None or state.status != "trained":
            raise DataError(f"{self.path} holds no finished training run: run `mtlrec train` first "
                            "with the same data/model/method/seed")
        return state

    def save_state(self, state: RunState) -> None:
        files.write_json(self._state_file, {k: v for k, v in asdict(state).items() if v is not None})

    def clear(self) -> None:
        """Remove everything (`train.force=true` on a finished run)."""
        files.remove(self.path)

    # ------------------------------------------------------------------ configuration

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    def save_config(self, resolved_yaml: str, model: ModelConfig) -> None:
        files.write_text(self.config_file, resolved_yaml)
        files.write_text(self._model_config_file, model.model_dump_json(indent=2))

    def config_text(self) -> str | None:
        return self.config_file.read_text() if self.config_file.is_file() else None

    @property
    def _model_config_file(self) -> Path:
        return self.path / "model_config.json"

    def model_config(self) -> ModelConfig:
        return load_model_config(self._model_config_file.read_text())

    # ------------------------------------------------------------------ per model

    def weights(self, model: str) -> Path:
        return self.path / ("model.pt" if model == MULTI_TASK else f"model-{model}.pt")

    def checkpoint(self, model: str) -> Path:
        return self.path / f"checkpoint-{model}.pt"

    def diagnostics(self, model: str) -> Path:
        return self.path / f"diagnostics-{model}.jsonl"

    def diagnostics_files(self) -> list[Path]:
        return sorted(self.path.glob("diagnostics-*.jsonl"))

    def save_weights(self, model: str, state_dict: dict[str, torch.Tensor]) -> None:
        with files.atomic_file(self.weights(model)) as tmp:
            torch.save(state_dict, tmp)

    def load_models(self, build: Callable[[ModelConfig, list[int]], nn.Module], tasks: list[str]
                    ) -> dict[str, nn.Module]:
        """Every trained model of the run, best weights loaded, in eval mode: {"all": the
        multi-task model} or {task: its STL model}. `build(config, task indices)` makes a
        fresh one with a head for each of `tasks` it is given."""
        config, out = self.model_config(), {}
        for name in self.history():
            model = build(config, list(range(len(tasks))) if name == MULTI_TASK else [tasks.index(name)])
            model.load_state_dict(torch.load(self.weights(name), weights_only=True))
            out[name] = model.eval()
        return out

    def load_multi_task_model(self, build: Callable[[ModelConfig, list[int]], nn.Module], n_tasks: int
                              ) -> nn.Module:
        """The run's one multi-task model (export, warm start); an STL run has none."""
        if not self.weights(MULTI_TASK).is_file():
            raise DataError(f"{self.path}: needs one multi-task model ({self.weights(MULTI_TASK).name}); "
                            "an STL run trains one model per task")
        model = build(self.model_config(), list(range(n_tasks)))
        model.load_state_dict(torch.load(self.weights(MULTI_TASK), weights_only=True))
        return model.eval()

    # ------------------------------------------------------------------ history

    @property
    def _history_file(self) -> Path:
        return self.path / "history.json"

    def save_history(self, history: dict[str, list[dict]]) -> None:
        files.write_json(self._history_file, history)

    def history(self) -> dict[str, list[dict]]:
        """{model: rows per epoch}, models in training order."""
        return json.loads(self._history_file.read_text())

    def best_row(self, model: str = MULTI_TASK) -> dict:
        """The epoch whose weights were kept: best validation score (the first one on a
        tie, as the trainer keeps it)."""
        rows = self.history()[model]
        key, higher = selection_of(rows[0])
        sign = 1.0 if higher else -1.0
        return max(rows, key=lambda row: sign * row[key])

    # ------------------------------------------------------------------ later stages' folders

    @property
    def evaluation(self) -> Path:
        """evaluate's folder: metrics.json, report.md, plots (also its MLflow artifact path)."""
        return self.path / "evaluation"

    @property
    def metrics_file(self) -> Path:
        return self.evaluation / "metrics.json"

    @property
    def report_file(self) -> Path:
        return self.evaluation / "report.md"

    def save_metrics(self, metrics: dict) -> None:
        files.write_json(self.metrics_file, metrics)

    def metrics(self) -> dict | None:
        """Test metrics of an evaluated run (None before `mtlrec evaluate`)."""
        return json.loads(self.metrics_file.read_text()) if self.metrics_file.is_file() else None

    @property
    def bundle(self) -> Path:
        """export's ONNX bundle (also its MLflow artifact path)."""
        return self.path / "bundle"

    @property
    def gate(self) -> Path:
        """The promotion gate's verdict: gate.json, gate.md (also its MLflow artifact path)."""
        return self.path / "gate"

    @property
    def gate_report(self) -> Path:
        return self.gate / "gate.md"

    @property
    def _gate_file(self) -> Path:
        return self.gate / "gate.json"

    def save_gate(self, summary: dict, markdown: str) -> None:
        files.write_json(self._gate_file, summary)
        files.write_text(self.gate_report, markdown)

    def gate_summary(self) -> dict | None:
        """What the last export did (version, action, gate verdict), if it ran."""
        return json.loads(self._gate_file.read_text()) if self._gate_file.exists() else None

    # ------------------------------------------------------------------ benchmarks

    @property
    def _bench_file(self) -> Path:
        return self.path / "bench.json"

    def save_train_seconds(self, seconds: float) -> None:
        files.write_json(self._bench_file, {"train_s": seconds})

    def train_seconds(self) -> float | None:
        """A benchmark's training wall time, once the run has finished under it."""
        return json.loads(self._bench_file.read_text())["train_s"] if self._bench_file.is_file() else None

    # ------------------------------------------------------------------ MLflow

    def log_training(self, features: list[Path], checkpoint_max_mb: float) -> None:
        """Log what a later run needs into the active MLflow run: config, model config,
        history, best weights, the feature artifacts (the champion's, for a warm start)
        and the checkpoints up to `checkpoint_max_mb` each."""
        for path in features:
            (mlflow.log_artifacts if path.is_dir() else mlflow.log_artifact)(str(path), _FEATURES_ARTIFACTS)
        for path in (self.config_file, self._model_config_file, self._history_file):
            mlflow.log_artifact(str(path))
        for model in self.history():
            mlflow.log_artifact(str(self.weights(model)), _WEIGHTS_ARTIFACTS)
            checkpoint = self.checkpoint(model)
            if checkpoint.stat().st_size <= checkpoint_max_mb * 2**20:
                mlflow.log_artifact(str(checkpoint), _CHECKPOINT_ARTIFACTS)

    @classmethod
    def download(cls, client: mlflow.MlflowClient, run_id: str, version: str, dest: Path
                 ) -> "RunFolder":
        """The multi-task model of a registered run, rebuilt as a run folder at `dest`
        (weights, model config, history, and its feature artifacts in `dest/features`);
        published atomically, so a half download is never taken for a champion."""
        run = cls(dest)
        with files.atomic_folder(dest) as work:
            staged = cls(work)
            wanted = {f"{_WEIGHTS_ARTIFACTS}/{staged.weights(MULTI_TASK).name}": staged.weights(MULTI_TASK),
                      staged._model_config_file.name: staged._model_config_file,
                      staged._history_file.name: staged._history_file,
                      _FEATURES_ARTIFACTS: work / _FEATURES_ARTIFACTS}
            for artifact, local in wanted.items():
                got = Path(client.download_artifacts(run_id, artifact, str(work / ".download")))
                got.rename(local)
            shutil.rmtree(work / ".download")
            staged.save_state(RunState(run_id, "trained", str(run.path / _FEATURES_ARTIFACTS), version))
        return run
