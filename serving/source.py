"""Where a served model comes from: an MLflow registry URI or a bundle folder.

`models:/<name>@<alias>` follows the alias (the server polls `version()` and reloads
when it moves); `models:/<name>/<version>` and a folder are fixed.

`load(version)` returns a verified bundle and trusts nothing on the way:
- a registered version must lie in its own run's artifact store (a version pointing
  anywhere else is refused);
- its bundle must be the one the exporting run recorded (the digest tag on the version)
  and, with a key (MTLREC_BUNDLE_KEY), carry a valid signature (`bundle.load`);
- a download is verified before it enters the cache (`<cache>/<name>/v<version>`,
  published atomically), so a refused download is never kept; a cached copy that fails
  its checks is downloaded again.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mtlrec import files
from mtlrec.features.errors import DataError
from mtlrec.serving import bundle

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
#: the model-version tag in which the exporting run records its bundle's digest
DIGEST_TAG = "mtlrec.bundle_sha256"
log = logging.getLogger(__name__)


class SourceError(DataError):
    """The model URI is malformed or names nothing in the registry."""


@dataclass(frozen=True)
class Source:
    """A model to serve. `version()` is cheap (one registry call) and says which bundle
    `load` would return now."""

    uri: str
    tracking_uri: str | None
    cache: Path
    key: bytes | None = None  # bundles must be signed with it (MTLREC_BUNDLE_KEY)

    @property
    def is_registry(self) -> bool:
        return self.uri.startswith("models:/")

    @property
    def model_name(self) -> str:
        """The name clients address the model by (the v2 protocol's {name}): the registered
        model's name, or a bundle folder's name."""
        match = _URI.match(self.uri)
        return match["name"] if match else Path(self.uri).name

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

    def load(self, version: str, threads: int = 1) -> bundle.Bundle:
        """The verified bundle of `version` (see the module docstring); raises
        SourceError or BundleError naming what failed."""
        if not self.is_registry:
            folder = Path(self.uri)
            if not folder.is_dir():
                raise SourceError(f"model {self.uri!r} is neither models:/… nor a bundle folder")
            return bundle.load(folder, threads, key=self.key)
        name = _URI.match(self.uri)["name"]
        record = self._registered(name, version)
        recorded = record.tags.get(DIGEST_TAG)
        target = self.cache / name / f"v{version}"
        if target.is_dir():
            try:
                return bundle.load(target, threads, recorded_digest=recorded, key=self.key)
            except bundle.BundleError as exc:
                log.warning("the cached %s version %s fails its checks, downloading it again: %s",
                            name, version, exc)
        with files.atomic_folder(target) as work:  # published only once it verifies
            self._download(record.source, work)
            return bundle.load(work, threads, recorded_digest=recorded, key=self.key)

    def _registered(self, name: str, version: str) -> ModelVersion:
        """The registry's record of `version`, whose source must lie in its run's artifacts."""
        client = self._client()
        try:
            record = client.get_model_version(name, version)
            run = client.get_run(record.run_id) if record.run_id else None
        except MlflowException as exc:
            raise SourceError(f"{name} version {version}: {exc.message}") from None
        store = run.info.artifact_uri.rstrip("/") + "/" if run else None
        if store is None or not record.source.startswith(store):
            raise SourceError(f"{name} version {version}: its source {record.source} lies outside the "
                              f"artifact store of its run ({store or 'no run'}): refused")
        return record

    def _download(self, source: str, into: Path) -> None:
        """The artifacts at `source` as the contents of `into`. MLflow puts a folder
        artifact in a subfolder named after it: it lands in a staging folder whose
        contents then move up."""
        staging = into / ".download"
        downloaded = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(staging), tracking_uri=self.tracking_uri))
        root = downloaded if downloaded.is_dir() else staging
        for entry in list(root.iterdir()):
            entry.rename(into / entry.name)
        shutil.rmtree(staging)
