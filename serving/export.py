"""Export: trained ranker → ONNX (dynamic batch) → parity check → bundle.

The only serving module that needs torch (it runs in the pipeline, never in a server).
The parity check compares the *trained* model (its training-time embeddings) with
onnxruntime on the exported file, so it covers the twin's weight copy as well as the
exporter. A failed check raises `ExportError`: no bundle is written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from mtlrec.features.transform import FeatureTransform
from mtlrec.models.export import export_twin
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.serving import bundle, parity

log = logging.getLogger(__name__)


class ExportError(bundle.BundleError):
    """The exported model does not reproduce the trained one."""


def to_onnx(ranker: MultiTaskRanker, n_fields: int, n_dense: int, path: Path, opset: int) -> Path:
    """Write the export twin of `ranker` as ONNX with a dynamic batch axis."""
    model = export_twin(ranker)
    example = (torch.zeros(8, n_fields, dtype=torch.int64), torch.zeros(8, n_dense))
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch")  # the exporter's progress chatter and tracing notes
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, example, str(path), input_names=[bundle.IDS, bundle.DENSE],
                output_names=[bundle.SCORES], dynamic_shapes=({0: batch}, {0: batch}),
                opset_version=opset, dynamo=True, verbose=False, external_data=False,
            )
    finally:
        quiet.setLevel(level)
    return path


def parity_inputs(valid_ids: np.ndarray, valid_dense: np.ndarray, table_sizes: list[int],
                  rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The first `rows` validation rows; when the split is smaller, random rows (every id
    of every table equally likely, dense ~ N(0, 1)) make up the count. Returns ids, dense
    and how many are real validation rows."""
    n_valid = min(rows, len(valid_ids))
    extra = rows - n_valid
    rng = np.random.default_rng(seed)
    random_ids = np.empty((extra, len(table_sizes)), np.int64)
    for j, size in enumerate(table_sizes):
        random_ids[:, j] = rng.integers(0, size, extra)
    random_dense = rng.standard_normal((extra, valid_dense.shape[1])).astype(np.float32)
    return (np.concatenate([valid_ids[:n_valid], random_ids]),
            np.concatenate([valid_dense[:n_valid], random_dense]), n_valid)


@torch.no_grad()
def reference_scores(ranker: MultiTaskRanker, ids: np.ndarray, dense: np.ndarray) -> np.ndarray:
    ranker.eval()
    return torch.sigmoid(ranker(torch.from_numpy(ids), torch.from_numpy(dense))).numpy()


def export_bundle(ranker: MultiTaskRanker, transform: FeatureTransform, valid_ids: np.ndarray,
                  valid_dense: np.ndarray, out: Path, *, metrics: dict, identity: dict,
                  parity_rows: int, tolerance: float, opset: int, seed: int,
                  key: bytes | None = None) -> dict:
    """Export, check parity on `parity_rows` rows, write the bundle to `out` (signed with
    `key` when given); returns the parity result (raises ExportError when it fails)."""
    sizes = [transform.table_sizes[f] for f in transform.categorical_names]
    ids, dense, n_valid = parity_inputs(valid_ids, valid_dense, sizes, parity_rows, seed)
    reference = reference_scores(ranker, ids, dense)
    with tempfile.TemporaryDirectory(prefix="mtlrec-export-") as tmp:
        onnx_file = to_onnx(ranker, ids.shape[1], dense.shape[1], Path(tmp) / bundle.MODEL_FILE,
                            opset)
        session = ort.InferenceSession(str(onnx_file), bundle.session_options(0),
                                       providers=["CPUExecutionProvider"])
        actual = session.run([bundle.SCORES], {bundle.IDS: ids, bundle.DENSE: dense})[0]
        result = parity.compare(reference, actual, transform.spec.task_names, tolerance) | {
            "validation_rows": n_valid, "random_rows": len(ids) - n_valid,
            "torch": torch.__version__, "onnxruntime": ort.__version__, "opset": opset,
        }
        if not result["passed"]:
            raise ExportError(f"export parity check failed (PyTorch vs onnxruntime on {len(ids):,} "
                              f"rows): max |diff| {result.get('max_abs_diff')} > {tolerance}; "
                              f"{result}")
        data = bundle.parity_frame(ids, dense, reference, transform)
        bundle.write(out, onnx_file, transform, metrics, result, data, identity, key)
    log.info("export: %s (parity max |diff| %.2e on %d rows)", out, result["max_abs_diff"], len(ids))
    return result
