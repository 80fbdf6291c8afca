"""The exported model bundle: one self-contained folder, plain files only (no pickles).

```
bundle/
  model.onnx        (ids int64 [B, F], dense float32 [B, D]) -> scores float32 [B, K]
  features/         feature_spec.json, vocab.parquet, numeric_stats.json, artifacts.json
  signature.json    input/output names, dtypes, shapes, field and task order
  metrics.json      the model's evaluation metrics (validation and test)
  parity.json       the export-time PyTorch vs onnxruntime check
  parity.parquet    its inputs and PyTorch scores: re-checked whenever a server loads it
  bundle.json       format, model/run ids, and the SHA-256 of every file above
```

`load` trusts nothing: checksums, the ONNX signature against the feature spec, and the
parity re-run must all pass, or it raises `BundleError` (a server then keeps its old
model).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl

from mtlrec.features.errors import DataError
from mtlrec.features.transform import FeatureTransform
from mtlrec.features.vocab import OOV_ID
from mtlrec.serving import parity

FORMAT = 1
MODEL_FILE = "model.onnx"
FEATURES_DIR = "features"
SIGNATURE_FILE = "signature.json"
METRICS_FILE = "metrics.json"
PARITY_FILE = "parity.json"
PARITY_DATA = "parity.parquet"
BUNDLE_FILE = "bundle.json"
IDS, DENSE, SCORES = "ids", "dense", "scores"
_ONNX_TYPES = {IDS: "tensor(int64)", DENSE: "tensor(float)", SCORES: "tensor(float)"}


class BundleError(DataError):
    """A bundle that must not serve: the message says which check failed."""


def signature(transform: FeatureTransform) -> dict:
    """What the ONNX model takes and returns, in the feature spec's field and task order."""
    return {
        "inputs": {
            IDS: {"dtype": "int64", "shape": [None, len(transform.categorical_names)],
                  "fields": transform.categorical_names},
            DENSE: {"dtype": "float32", "shape": [None, len(transform.numeric_names)],
                    "fields": transform.numeric_names},
        },
        "outputs": {SCORES: {"dtype": "float32", "shape": [None, len(transform.spec.task_names)],
                             "tasks": transform.spec.task_names, "kind": "probability"}},
        "id_column": transform.spec.id,
    }


def parity_frame(ids: np.ndarray, dense: np.ndarray, scores: np.ndarray,
                 transform: FeatureTransform) -> pl.DataFrame:
    """The parity inputs and reference scores as one flat table (one column per field/task)."""
    cols = {f"id:{f}": ids[:, j] for j, f in enumerate(transform.categorical_names)}
    cols |= {f"x:{f}": dense[:, j] for j, f in enumerate(transform.numeric_names)}
    cols |= {f"p:{t}": scores[:, k] for k, t in enumerate(transform.spec.task_names)}
    return pl.DataFrame(cols)


def write(folder: Path, onnx_file: Path, transform: FeatureTransform, metrics: dict,
          parity_result: dict, parity_data: pl.DataFrame, identity: dict) -> Path:
    """Assemble a bundle in a temporary folder and rename it into place (atomic)."""
    folder = Path(folder)
    work = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copyfile(onnx_file, work / MODEL_FILE)
    transform.save(work / FEATURES_DIR)
    (work / SIGNATURE_FILE).write_text(json.dumps(signature(transform), indent=2))
    (work / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    (work / PARITY_FILE).write_text(json.dumps(parity_result, indent=2))
    parity_data.write_parquet(work / PARITY_DATA)
    files = {p.relative_to(work).as_posix(): _sha256(p.read_bytes())
             for p in sorted(work.rglob("*")) if p.is_file()}
    manifest = {"format": FORMAT, **identity, "tasks": transform.spec.task_names, "files": files}
    (work / BUNDLE_FILE).write_text(json.dumps(manifest, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    work.rename(folder)
    return folder


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, ready to score: the session, the transform and what it says."""

    folder: Path
    session: ort.InferenceSession
    transform: FeatureTransform
    manifest: dict
    metrics: dict
    parity: dict

    @property
    def tasks(self) -> list[str]:
        return self.transform.spec.task_names

    def predict(self, ids: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """Probabilities [N, K] for model-ready ids and dense features."""
        return self.session.run([SCORES], {IDS: ids, DENSE: dense})[0]

    def score(self, typed: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Typed raw rows (serving.rows) → (probabilities [N, K], OOV count per field [F])."""
        ids, dense = self.transform.to_numpy(typed)
        return self.predict(ids, dense), (ids == OOV_ID).sum(axis=0)


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def load(folder: Path, threads: int = 1) -> Bundle:
    """Open and verify a bundle; raises BundleError naming the failed check."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / BUNDLE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder}: unreadable {BUNDLE_FILE}: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{folder}: bundle format {manifest.get('format')!r}, expected {FORMAT}")
    contents = _verified_files(folder, manifest["files"])
    try:
        transform = FeatureTransform.load(folder / FEATURES_DIR)
        session = ort.InferenceSession(contents[MODEL_FILE], session_options(threads),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any failure to open means: refuse this bundle
        raise BundleError(f"{folder}: cannot load: {exc}") from None
    _check_signature(folder, session, transform, json.loads(contents[SIGNATURE_FILE]))
    stored = json.loads(contents[PARITY_FILE])
    bundle = Bundle(folder, session, transform, manifest, json.loads(contents[METRICS_FILE]), stored)
    _recheck_parity(bundle, stored["tolerance"])
    return bundle


def _verified_files(folder: Path, files: dict[str, str]) -> dict[str, bytes]:
    """Every listed file, read once and checked against its SHA-256 (the small ones returned)."""
    needed = {MODEL_FILE, SIGNATURE_FILE, METRICS_FILE, PARITY_FILE, PARITY_DATA}
    missing = sorted(needed - set(files))
    if missing:
        raise BundleError(f"{folder}: {BUNDLE_FILE} does not list {missing}")
    out = {}
    for name, digest in files.items():
        try:
            data = (folder / name).read_bytes()
        except OSError as exc:
            raise BundleError(f"{folder}: {name} is unreadable: {exc}") from None
        if _sha256(data) != digest:
            raise BundleError(f"{folder}: {name} does not match its checksum in {BUNDLE_FILE}")
        if name in needed:
            out[name] = data
    return out


def _check_signature(folder: Path, session: ort.InferenceSession, transform: FeatureTransform,
                     stored: dict) -> None:
    expected = signature(transform)
    if stored != json.loads(json.dumps(expected)):
        raise BundleError(f"{folder}: {SIGNATURE_FILE} does not match the bundle's feature spec")
    widths = {IDS: len(transform.categorical_names), DENSE: len(transform.numeric_names),
              SCORES: len(transform.spec.task_names)}
    got = {a.name: a for a in [*session.get_inputs(), *session.get_outputs()]}
    for name, width in widths.items():
        arg = got.get(name)
        if arg is None:
            raise BundleError(f"{folder}: the ONNX model has no '{name}' (it has {sorted(got)})")
        if arg.type != _ONNX_TYPES[name] or len(arg.shape) != 2 or arg.shape[1] != width \
                or isinstance(arg.shape[0], int):
            raise BundleError(f"{folder}: ONNX '{name}' is {arg.type} {arg.shape}; the spec needs "
                              f"{_ONNX_TYPES[name]} [batch, {width}] with a dynamic batch")


def _recheck_parity(bundle: Bundle, tolerance: float) -> None:
    data = pl.read_parquet(bundle.folder / PARITY_DATA)
    t = bundle.transform
    ids = data.select(f"id:{f}" for f in t.categorical_names).to_numpy().astype(np.int64)
    dense = data.select(f"x:{f}" for f in t.numeric_names).to_numpy().astype(np.float32)
    reference = data.select(f"p:{k}" for k in bundle.tasks).to_numpy()
    result = parity.compare(reference, bundle.predict(ids, dense), bundle.tasks, tolerance)
    if not result["passed"]:
        raise BundleError(f"{bundle.folder}: parity re-check failed: {result}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
