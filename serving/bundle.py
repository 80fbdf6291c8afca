"""The exported model bundle: one self-contained folder, plain files only (no pickles).

```
bundle/
  model.onnx        (ids int64 [B, S], dense float32 [B, D][, lengths int64 [B, M]])
                    -> scores float32 [B, K]; S = F without multi-valued fields (see
                    features.transform.ModelInputs), lengths only with them
  features/         feature_spec.json, vocab.parquet, numeric_stats.json, artifacts.json
  signature.json    input/output names, dtypes, shapes, field and task order
  metrics.json      the model's evaluation metrics (validation and test)
  parity.json       the export-time PyTorch vs onnxruntime check
  parity.parquet    its inputs and PyTorch scores: re-checked whenever a server loads it
  reference_stats.json  statistics of the training split (features.stats): what drift and
                    skew compare with, without the training data (absent in older bundles)
  bundle.json       format, model/run ids, and the SHA-256 of every file above
  bundle.hmac       HMAC-SHA256 of the bundle's digest (with MTLREC_BUNDLE_KEY at export)
```

`bundle` is published atomically (`mtlrec.files.atomic_folder`): a link to a versioned
sibling `.bundle@<id>` that a rewrite swaps in one rename, so a writer killed midway
leaves the previous bundle in place. `load` resolves the link once and reads every file
from that one version.

`load` trusts nothing: checksums, the ONNX signature against the feature spec, and the
parity re-run must all pass, or it raises `BundleError` (a server then keeps its old
model). The checksums sit beside the files they protect, so whoever alters a file can
recompute them: the bundle's digest (the SHA-256 of bundle.json, which lists every
file's) is also recorded in the registry by the exporting run, and with a key the
exporter signs it. `load(…, digest=, key=)` checks both before anything else.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl

from mtlrec import files
from mtlrec.features.errors import DataError
from mtlrec.features.folder import TaskInfo
from mtlrec.features.online import OnlineTransform
from mtlrec.features.stats import SliceStats
from mtlrec.features.transform import FeatureTransform, ModelInputs
from mtlrec.features.vocab import OOV_ID
from mtlrec.serving import parity

FORMAT = 1
MODEL_FILE = "model.onnx"
FEATURES_DIR = "features"
SIGNATURE_FILE = "signature.json"
METRICS_FILE = "metrics.json"
PARITY_FILE = "parity.json"
PARITY_DATA = "parity.parquet"
REFERENCE_STATS = "reference_stats.json"
BUNDLE_FILE = "bundle.json"
HMAC_FILE = "bundle.hmac"
IDS, DENSE, LENGTHS, SCORES = "ids", "dense", "lengths", "scores"
_ONNX_TYPES = {IDS: "tensor(int64)", DENSE: "tensor(float)", LENGTHS: "tensor(int64)",
               SCORES: "tensor(float)"}


class BundleError(DataError):
    """A bundle that must not serve: the message says which check failed."""


def score_columns(transform: FeatureTransform) -> list[str]:
    """The columns of the model's scores: a task's name, or `<task>:<class>` per class of a
    multiclass task (`features.folder.TaskInfo.columns`)."""
    return [c for t in transform.info.task_info for c in t.columns]


def signature(transform: FeatureTransform) -> dict:
    """What the ONNX model takes and returns, in the feature spec's field and task order."""
    ids = {"dtype": "int64", "shape": [None, sum(transform.slot_widths)],
           "fields": transform.categorical_names}
    inputs = {IDS: ids, DENSE: {"dtype": "float32", "shape": [None, len(transform.numeric_names)],
                                "fields": transform.numeric_names}}
    multi = [f.name for f in transform.spec.multi_fields]
    if multi:  # only then: the signature of every bundle before multi-valued fields is kept
        ids["widths"] = transform.slot_widths
        inputs[LENGTHS] = {"dtype": "int64", "shape": [None, len(multi)], "fields": multi}
    tasks = transform.info.task_info
    scores = {"dtype": "float32", "shape": [None, len(score_columns(transform))],
              "tasks": transform.spec.task_names, "kind": "probability"}
    if not all(t.plain for t in tasks):  # only then: every bundle of binary tasks keeps its signature
        scores |= {"kind": "answer", "columns": score_columns(transform),
                   "kinds": {t.name: t.kind for t in tasks}}
    return {"inputs": inputs, "outputs": {SCORES: scores}, "id_column": transform.spec.id}


def parity_frame(inputs: ModelInputs, scores: np.ndarray, transform: FeatureTransform) -> pl.DataFrame:
    """The parity inputs and reference scores as one flat table (one column per id slot,
    length, dense field and task)."""
    ids, lengths, dense = _parity_columns(transform)
    cols = {c: inputs.ids[:, j] for j, c in enumerate(ids)}
    cols |= {c: inputs.lengths[:, j] for j, c in enumerate(lengths)}
    cols |= {c: inputs.dense[:, j] for j, c in enumerate(dense)}
    cols |= {f"p:{t}": scores[:, k] for k, t in enumerate(score_columns(transform))}
    return pl.DataFrame(cols)


def _parity_columns(transform: FeatureTransform) -> tuple[list[str], list[str], list[str]]:
    ids = [f"id:{f.name}:{j}" if f.multi else f"id:{f.name}"
           for f in transform.spec.categorical for j in range(f.max_len if f.multi else 1)]
    return (ids, [f"len:{f.name}" for f in transform.spec.multi_fields],
            [f"x:{f}" for f in transform.numeric_names])


def write(folder: Path, onnx_file: Path, transform: FeatureTransform, metrics: dict,
          parity_result: dict, parity_data: pl.DataFrame, identity: dict,
          key: bytes | None = None, reference_stats: Path | None = None) -> Path:
    """Assemble a bundle in a work folder and publish it as `folder` in one rename: a reader
    sees the previous bundle or this one, also when the writer is killed midway. With
    `key`, the bundle's digest is signed (HMAC-SHA256) into bundle.hmac."""
    with files.atomic_folder(folder) as work:
        shutil.copyfile(onnx_file, work / MODEL_FILE)
        transform.save(work / FEATURES_DIR)
        (work / SIGNATURE_FILE).write_text(json.dumps(signature(transform), indent=2))
        (work / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        (work / PARITY_FILE).write_text(json.dumps(parity_result, indent=2))
        parity_data.write_parquet(work / PARITY_DATA)
        if reference_stats is not None and Path(reference_stats).is_file():
            shutil.copyfile(reference_stats, work / REFERENCE_STATS)
        checksums = {p.relative_to(work).as_posix(): _sha256(p.read_bytes())
                     for p in sorted(work.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, **identity, "tasks": transform.spec.task_names,
                    "files": checksums}
        (work / BUNDLE_FILE).write_text(json.dumps(manifest, indent=2))
        if key is not None:
            (work / HMAC_FILE).write_text(sign(digest(work), key))
    return Path(folder)


def digest(folder: Path) -> str:
    """The bundle's identity: the SHA-256 of its bundle.json (which lists every file's)."""
    return _sha256((files.resolved(folder) / BUNDLE_FILE).read_bytes())


def sign(bundle_digest: str, key: bytes) -> str:
    return hmac.new(key, bundle_digest.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle, ready to score: the session, the transform and what it says.
    `folder` is the version it was read from (`files.resolved`)."""

    folder: Path
    session: ort.InferenceSession
    transform: FeatureTransform
    manifest: dict
    metrics: dict
    parity: dict
    reference: SliceStats | None = None  # the training split's statistics (older bundles: none)

    @property
    def tasks(self) -> list[str]:
        return self.transform.spec.task_names

    @cached_property
    def task_info(self) -> list[TaskInfo]:
        return self.transform.info.task_info

    @cached_property
    def columns(self) -> list[str]:
        """The score columns (see `score_columns`)."""
        return score_columns(self.transform)

    def predict(self, inputs: ModelInputs) -> np.ndarray:
        """Answers [N, W] for model-ready inputs (probabilities of binary tasks, values of
        regression tasks, class probabilities of multiclass ones: `models.outputs`)."""
        return self.session.run([SCORES], feeds(inputs))[0]

    def answers(self, scores: np.ndarray) -> list[dict]:
        """Each row's answer per task: a number, or {class: probability} for a multiclass task."""
        if all(t.width == 1 for t in self.task_info):
            return [dict(zip(self.tasks, row)) for row in scores.tolist()]
        out: list[dict] = [{} for _ in range(len(scores))]
        start = 0
        for t in self.task_info:
            block = scores[:, start:start + t.width].tolist()
            start += t.width
            for row, values in zip(out, block):
                row[t.name] = dict(zip(t.classes, values)) if t.classes else values[0]
        return out

    @cached_property
    def online(self) -> OnlineTransform:
        """The transform of served requests (features/online.py); `load` builds it."""
        return OnlineTransform(self.transform)

    def score(self, typed: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Typed raw rows (serving.rows) → (probabilities [N, K], OOV count per field [F])."""
        inputs = self.transform.to_numpy(typed)
        return self.predict(inputs), oov_per_field(inputs, self.transform)


def feeds(inputs: ModelInputs) -> dict[str, np.ndarray]:
    """The ONNX session's inputs (lengths only for models with multi-valued fields)."""
    out = {IDS: inputs.ids, DENSE: inputs.dense}
    if inputs.lengths is not None:
        out[LENGTHS] = inputs.lengths
    return out


def oov_per_field(inputs: ModelInputs, transform: FeatureTransform) -> np.ndarray:
    """Out-of-vocabulary ids per field [F], counting only a multi field's real elements."""
    oov = inputs.ids == OOV_ID
    if inputs.lengths is None:
        return oov.sum(axis=0)
    out, slot, m = [], 0, 0
    for f in transform.spec.categorical:
        if f.multi:
            real = np.arange(f.max_len) < inputs.lengths[:, m][:, None]
            out.append(int((oov[:, slot:slot + f.max_len] & real).sum()))
            slot, m = slot + f.max_len, m + 1
        else:
            out.append(int(oov[:, slot].sum()))
            slot += 1
    return np.asarray(out)


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def load(folder: Path, threads: int = 1, *, recorded_digest: str | None = None,
         key: bytes | None = None) -> Bundle:
    """Open and verify a bundle; raises BundleError naming the failed check. Every file is
    read from the version `folder` points at when the call starts. `recorded_digest`: the
    one the exporting run recorded (the bundle must be that one); `key`: the bundle must
    carry a valid HMAC of its digest."""
    folder = files.resolved(folder)
    try:
        raw = (folder / BUNDLE_FILE).read_bytes()
        manifest = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder}: unreadable {BUNDLE_FILE}: {exc}") from None
    _check_identity(folder, _sha256(raw), recorded_digest, key)
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
    reference = SliceStats.from_json(json.loads(contents[REFERENCE_STATS])) \
        if REFERENCE_STATS in contents else None
    bundle = Bundle(folder, session, transform, manifest, json.loads(contents[METRICS_FILE]), stored,
                    reference)
    _recheck_parity(bundle, contents[PARITY_DATA], stored["tolerance"])
    _ = bundle.online  # its lookup tables are built now, not by the first request
    return bundle


def _check_identity(folder: Path, actual: str, recorded: str | None, key: bytes | None) -> None:
    """The bundle is the one its exporting run recorded, and signed with `key` when given."""
    if recorded is not None and actual != recorded:
        raise BundleError(f"{folder}: its digest {actual[:16]}… differs from the {recorded[:16]}… "
                          "its exporting run recorded in the registry: it was altered after export")
    if key is None:
        return
    try:
        signature_hex = (folder / HMAC_FILE).read_text().strip()
    except OSError:
        raise BundleError(f"{folder}: the bundle is unsigned ({HMAC_FILE} is missing) and "
                          "MTLREC_BUNDLE_KEY is set: only signed bundles may serve") from None
    if not hmac.compare_digest(signature_hex, sign(actual, key)):
        raise BundleError(f"{folder}: {HMAC_FILE} does not match MTLREC_BUNDLE_KEY: the bundle was "
                          "altered or signed with another key")


def _verified_files(folder: Path, checksums: dict[str, str]) -> dict[str, bytes]:
    """Every listed file, read once and checked against its SHA-256; returns those `load` uses."""
    needed = {MODEL_FILE, SIGNATURE_FILE, METRICS_FILE, PARITY_FILE, PARITY_DATA}
    missing = sorted(needed - set(checksums))
    if missing:
        raise BundleError(f"{folder}: {BUNDLE_FILE} does not list {missing}")
    out = {}
    for name, digest in checksums.items():
        try:
            data = (folder / name).read_bytes()
        except OSError as exc:
            raise BundleError(f"{folder}: {name} is unreadable: {exc}") from None
        if _sha256(data) != digest:
            raise BundleError(f"{folder}: {name} does not match its checksum in {BUNDLE_FILE}")
        if name in needed or name == REFERENCE_STATS:
            out[name] = data
    return out


def _check_signature(folder: Path, session: ort.InferenceSession, transform: FeatureTransform,
                     stored: dict) -> None:
    expected = signature(transform)
    if stored != json.loads(json.dumps(expected)):
        raise BundleError(f"{folder}: {SIGNATURE_FILE} does not match the bundle's feature spec")
    widths = {IDS: sum(transform.slot_widths), DENSE: len(transform.numeric_names),
              SCORES: len(score_columns(transform))}
    if transform.spec.multi_fields:
        widths[LENGTHS] = len(transform.spec.multi_fields)
    got = {a.name: a for a in [*session.get_inputs(), *session.get_outputs()]}
    for name, width in widths.items():
        arg = got.get(name)
        if arg is None:
            raise BundleError(f"{folder}: the ONNX model has no '{name}' (it has {sorted(got)})")
        if arg.type != _ONNX_TYPES[name] or len(arg.shape) != 2 or arg.shape[1] != width \
                or isinstance(arg.shape[0], int):
            raise BundleError(f"{folder}: ONNX '{name}' is {arg.type} {arg.shape}; the spec needs "
                              f"{_ONNX_TYPES[name]} [batch, {width}] with a dynamic batch")


def _recheck_parity(bundle: Bundle, parity_data: bytes, tolerance: float) -> None:
    """The stored PyTorch scores against this session's, on the (checksummed) stored inputs."""
    data = pl.read_parquet(io.BytesIO(parity_data))
    ids, lengths, dense = _parity_columns(bundle.transform)
    inputs = ModelInputs(data.select(ids).to_numpy().astype(np.int64),
                         data.select(dense).to_numpy().astype(np.float32).reshape(len(data), len(dense)),
                         data.select(lengths).to_numpy().astype(np.int64) if lengths else None)
    reference = data.select(f"p:{k}" for k in bundle.columns).to_numpy()
    result = parity.compare(reference, bundle.predict(inputs), bundle.columns, tolerance)
    if not result["passed"]:
        raise BundleError(f"{bundle.folder}: parity re-check failed: {result}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
