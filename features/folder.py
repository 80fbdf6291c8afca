"""The model-ready features folder: what `mtlrec ingest` writes and training, export,
retraining and the benchmarks read. One type owns its layout, so no other module spells
one of its file names:

```
<features>/
  data/split=<train|valid|test>/[day=…/]*.parquet   model-ready rows
  artifacts/        the fitted transform (feature_spec.json, vocab.parquet,
                    numeric_stats.json) and artifacts.json (`FeatureInfo`)
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


@dataclass(frozen=True)
class FeatureInfo:
    """What a model needs to know about the features: field and task order, embedding
    table sizes, the group column, and the polars version that hashed any hashed field."""

    categorical: list[str]
    numeric: list[str]
    tasks: list[str]
    table_sizes: dict[str, int]
    group: str | None = None
    polars_version: str | None = None
    multi: dict[str, dict] = field(default_factory=dict)  # multi-valued field → max_len, pooling

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
        return cls(info["categorical"], info["numeric"], info["tasks"], info["table_sizes"],
                   info.get("group"), info.get("polars_version"), info.get("multi", {}))


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
