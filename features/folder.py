"""The model-ready features folder: what `mtlrec ingest` writes and training, export,
retraining and the benchmarks read. One type owns its layout, so no other module spells
one of its file names:

```
<features>/
  data/split=<train|valid|test>/[day=…/]*.parquet   model-ready rows
  artifacts/        the fitted transform (feature_spec.json, vocab.parquet,
                    numeric_stats.json) and artifacts.json (`FeatureInfo`)
  stats/            statistics per day (or split) and of the training split (reference.json)
  quarantine.parquet  every rejected row with its reason
  manifest.json     rows read / quarantined per file, split sizes, fingerprint
  config.yaml       the resolved config of the ingest
```

Plain JSON and paths only (no polars, no torch): the training path reads it on machines
that have neither polars nor mlflow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from mtlrec import files
from mtlrec.features.errors import DataError

INFO_FILE = "artifacts.json"
WEIGHT_COL = "__weight"  # the model-ready column of sample weights (data.weight), when there is one


@dataclass(frozen=True)
class TaskInfo:
    """One task as training, export and serving need it: its kind and what turns the
    model's outputs into the task's answer.

    - binary: one logit; the probability is σ(logit + `logit_offset`), where the offset
      log(r) undoes negative downsampling at rate r (p / (p + (1 − p)/r)), 0 otherwise;
    - regression: one value in standardised units; the answer is value·std + mean, then
      expm1 when the target was learnt as log1p;
    - multiclass: one logit per class of `classes`; the answer is their softmax.
    """

    name: str
    kind: str = "binary"
    classes: list[str] | None = None
    logit_offset: float = 0.0
    mean: float = 0.0
    std: float = 1.0
    log1p: bool = False
    loss: str = "mse"
    huber_delta: float = 1.0
    unit: str = ""
    may_be_missing: bool = False  # optional or masked: some rows have no label

    @property
    def width(self) -> int:
        """Model outputs of the task."""
        return len(self.classes) if self.classes else 1

    @property
    def columns(self) -> list[str]:
        """Its columns of served scores: the task's name, or `<task>:<class>` per class."""
        return [f"{self.name}:{c}" for c in self.classes] if self.classes else [self.name]

    @property
    def plain(self) -> bool:
        """A binary task scored σ(logit), as every task of mtlrec ≤ 0.x was."""
        return self.kind == "binary" and self.logit_offset == 0.0


@dataclass(frozen=True)
class Sampled:
    """Negative downsampling of the training split (data.sampling): rows with `task` = 0
    kept at `rate`. The task is calibrated by its logit offset; every other task weighs
    the kept rows with `task` = 0 by 1/rate, so its loss is the full data's."""

    task: str
    rate: float


@dataclass(frozen=True)
class FeatureInfo:
    """What a model needs to know about the features: field and task order, embedding
    table sizes, the group column, the polars version that hashed any hashed field, each
    task's kind (`TaskInfo`; binary for folders of mtlrec ≤ 0.x), whether rows carry a
    sample weight, and the training split's negative downsampling."""

    categorical: list[str]
    numeric: list[str]
    tasks: list[str]
    table_sizes: dict[str, int]
    group: str | None = None
    polars_version: str | None = None
    multi: dict[str, dict] = field(default_factory=dict)  # multi-valued field → max_len, pooling
    task_info: list[TaskInfo] = field(default_factory=list)  # per task, in `tasks` order
    weighted: bool = False  # the rows hold WEIGHT_COL
    sampled: Sampled | None = None

    def __post_init__(self) -> None:
        if not self.task_info:  # folders written before task kinds: every task binary
            object.__setattr__(self, "task_info", [TaskInfo(t) for t in self.tasks])
        if [t.name for t in self.task_info] != list(self.tasks):
            raise DataError(f"task_info {[t.name for t in self.task_info]} does not match tasks {self.tasks}")

    @property
    def max_len(self) -> dict[str, int]:
        return {name: m["max_len"] for name, m in self.multi.items()}

    @property
    def pooling(self) -> dict[str, str]:
        return {name: m["pooling"] for name, m in self.multi.items()}

    def save(self, artifacts_dir: Path) -> None:
        """Into an artifacts folder being built inside an atomic folder (ingest, bundle)."""
        (Path(artifacts_dir) / INFO_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, artifacts_dir: Path) -> "FeatureInfo":
        path = Path(artifacts_dir) / INFO_FILE
        if not path.is_file():
            raise DataError(f"{artifacts_dir}: feature artifact {INFO_FILE} is missing")
        info = json.loads(path.read_text())
        sampled = info.get("sampled")
        return cls(info["categorical"], info["numeric"], info["tasks"], info["table_sizes"],
                   info.get("group"), info.get("polars_version"), info.get("multi", {}),
                   [TaskInfo(**t) for t in info.get("task_info", [])], info.get("weighted", False),
                   Sampled(**sampled) if sampled else None)


@dataclass(frozen=True)
class FeaturesFolder:
    """One model-ready features folder (see the module docstring for its layout)."""

    path: Path

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def artifacts_dir(self) -> Path:
        return self.path / "artifacts"

    @property
    def quarantine_file(self) -> Path:
        return self.path / "quarantine.parquet"

    @property
    def manifest_file(self) -> Path:
        return self.path / "manifest.json"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def stats_dir(self) -> Path:
        """Statistics of each day (or split) as ingested: `<column>=<value>.json`."""
        return self.path / "stats"

    def slice_stats_file(self, column: str, value: str) -> Path:
        return self.stats_dir / f"{column}={value}.json"

    @property
    def reference_stats_file(self) -> Path:
        """Statistics of the training split: what a model trained here is compared with."""
        return self.stats_dir / "reference.json"

    @property
    def rejected(self) -> "FeaturesFolder":
        """Where an ingest rejected for too many bad rows keeps its record, next to this one."""
        return FeaturesFolder(self.path.with_name(f"{self.path.name}.rejected"))

    @cached_property
    def manifest(self) -> dict:
        try:
            return json.loads(self.manifest_file.read_text())
        except ValueError as exc:
            raise DataError(f"{self.manifest_file} is unreadable ({exc}): run `mtlrec ingest` "
                            "for this data again (it rebuilds the folder)") from None

    def is_ingested(self) -> bool:
        """A finished ingest is here (a rejected one keeps its manifest elsewhere)."""
        return self.manifest_file.is_file()

    def holds(self, fingerprint: str) -> bool:
        """A finished ingest of exactly these inputs and spec is here (an unreadable
        manifest is not trusted: the folder is rebuilt)."""
        try:
            return self.is_ingested() and self.manifest.get("fingerprint") == fingerprint
        except DataError:
            return False

    def info(self) -> FeatureInfo:
        return FeatureInfo.load(self.artifacts_dir)

    def require(self, data_name: str) -> "FeaturesFolder":
        """This folder, bound to the version published now; or a DataError saying which
        command makes it."""
        if not self.is_ingested():
            raise DataError(f"no ingested data in {self.path}: run `mtlrec ingest data={data_name}` first")
        return FeaturesFolder(files.resolved(self.path))

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def save_manifest(self, manifest: dict) -> None:
        """Into a folder being built inside an atomic folder (ingest's work folder)."""
        self.manifest_file.write_text(json.dumps(manifest, indent=2))
