"""Where a served model comes from: an MLflow registry URI or a bundle folder.

`models:/<name>@<alias>` follows the alias (the server polls `version()` and reloads
when it moves); `models:/<name>/<version>` and a folder are fixed. Downloads land in a
cache folder under a temporary name and are renamed into place, so a half-downloaded
bundle is never mistaken for a complete one.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.artifacts
from mlflow.exceptions import MlflowException

from mtlrec.features.errors import DataError

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class SourceError(DataError):
    """The model URI is malformed or names nothing in the registry."""


@dataclass(frozen=True)
class Source:
    """A model to serve. `version()` is cheap (one registry call) and says which bundle
    `fetch` would return now."""

    uri: str
    tracking_uri: str | None
    cache: Path

    @property
    def is_registry(self) -> bool:
        return self.uri.startswith("models:/")

    @property
    def follows_alias(self) -> bool:
        match = _URI.match(self.uri)
        return bool(match and match["alias"])

    def _client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def version(self) -> str:
        """The registered version the URI points at now (a folder: its path)."""
        if not self.is_registry:
            return str(Path(self.uri).resolve())
        match = _URI.match(self.uri)
        if match is None:
            raise SourceError(f"model URI {self.uri!r}: expected models:/<name>@<alias> or "
                              "models:/<name>/<version>")
        if match["version"]:
            return match["version"]
        try:
            return str(self._client().get_model_version_by_alias(match["name"], match["alias"]).version)
        except MlflowException as exc:
            raise SourceError(f"model URI {self.uri!r}: {exc.message}") from None

    def fetch(self, version: str) -> Path:
        """The bundle folder of `version` (downloaded once into the cache)."""
        if not self.is_registry:
            folder = Path(self.uri)
            if not folder.is_dir():
                raise SourceError(f"model {self.uri!r} is neither models:/… nor a bundle folder")
            return folder
        name = _URI.match(self.uri)["name"]
        target = self.cache / name / f"v{version}"
        if target.is_dir():
            return target
        try:
            source = self._client().get_model_version(name, version).source
        except MlflowException as exc:
            raise SourceError(f"{name} version {version}: {exc.message}") from None
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp),
                                                tracking_uri=self.tracking_uri)
            downloaded = tmp / Path(source.rstrip("/")).name
            (downloaded if downloaded.is_dir() else tmp).rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
