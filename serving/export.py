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

from mtlrec.features.batches import Batch, Slots
from mtlrec.features.transform import FeatureTransform, ModelInputs
from mtlrec.features.folder import TaskInfo
from mtlrec.models.export import export_twin
from mtlrec.models.outputs import Answer, TaskAnswers
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.serving import bundle, parity

log = logging.getLogger(__name__)


class ExportError(bundle.BundleError):
    """The exported model does not reproduce the trained one."""


def task_answers(tasks: list[TaskInfo]) -> TaskAnswers:
    """The module turning the ranker's outputs into the tasks' served answers."""
    return TaskAnswers([Answer(t.kind, t.width, t.logit_offset, t.mean, t.std, t.log1p) for t in tasks])


def to_onnx(ranker: MultiTaskRanker, transform: FeatureTransform, path: Path, opset: int) -> Path:
    """Write the export twin of `ranker` as ONNX with a dynamic batch axis; its inputs are
    `features.transform.ModelInputs` (lengths only with multi-valued fields)."""
    max_len = {f.name: f.max_len for f in transform.spec.multi_fields}
    model = export_twin(ranker, max_len, task_answers(transform.info.task_info))
    example = _torch_inputs(transform, ModelInputs(
        np.zeros((8, sum(transform.slot_widths)), np.int64),
        np.zeros((8, len(transform.numeric_names)), np.float32),
        np.ones((8, len(max_len)), np.int64) if max_len else None))
    names = [bundle.IDS] + ([bundle.LENGTHS] if max_len else []) + [bundle.DENSE]
    return export_onnx(model, example, names, path, opset)


def export_onnx(model: torch.nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str],
                path: Path, opset: int) -> Path:
    """`model(*example)` as ONNX (dynamo exporter), every input with a dynamic batch axis,
    its output named `scores`; the exporter's chatter silenced."""
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch")  # the exporter's progress chatter and tracing notes
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, example, str(path), input_names=input_names,
                output_names=[bundle.SCORES], dynamic_shapes=tuple({0: batch} for _ in input_names),
                opset_version=opset, dynamo=True, verbose=False, external_data=False,
            )
    finally:
        quiet.setLevel(level)
    return path


def _torch_inputs(transform: FeatureTransform, inputs: ModelInputs) -> tuple[torch.Tensor, ...]:
    """The export twin's positional arguments: (ids[, lengths], dense)."""
    lengths = () if inputs.lengths is None else (torch.from_numpy(inputs.lengths),)
    return (torch.from_numpy(inputs.ids), *lengths, torch.from_numpy(inputs.dense))


def parity_inputs(valid: ModelInputs, transform: FeatureTransform, rows: int, seed: int
                  ) -> tuple[ModelInputs, int]:
    """The first `rows` validation rows; when the split is smaller, random rows (every id
    of every table equally likely, any list length, dense ~ N(0, 1)) make up the count.
    Returns the inputs and how many are real validation rows."""
    n_valid = min(rows, len(valid))
    extra = rows - n_valid
    rng = np.random.default_rng(seed)
    sizes = [transform.table_sizes[f.name] for f in transform.spec.categorical]
    ids = np.concatenate([rng.integers(0, size, (extra, width))
                          for size, width in zip(sizes, transform.slot_widths)], axis=1)
    dense = rng.standard_normal((extra, valid.dense.shape[1])).astype(np.float32)
    lengths = None if valid.lengths is None else np.stack(
        [rng.integers(0, f.max_len + 1, extra) for f in transform.spec.multi_fields], axis=1)
    return ModelInputs.concat([valid.head(n_valid), ModelInputs(ids.astype(np.int64), dense, lengths)]), n_valid


@torch.no_grad()
def reference_scores(ranker: MultiTaskRanker, transform: FeatureTransform, inputs: ModelInputs) -> np.ndarray:
    """The trained ranker's answers on its training-time input (a KeyedJaggedTensor with the
    rows' real lengths when some field is multi-valued)."""
    ranker.eval()
    answers = task_answers(transform.info.task_info)
    ids, dense = torch.from_numpy(inputs.ids), torch.from_numpy(inputs.dense)
    if inputs.lengths is None:
        return answers(ranker(ids, dense)).numpy()
    slots = Slots(tuple(transform.slot_widths), tuple(f.multi for f in transform.spec.categorical))
    batch = Batch(transform.categorical_names, ids, dense, torch.zeros(len(inputs), 0),
                  torch.from_numpy(inputs.lengths), slots)
    return answers(ranker(batch.sparse, dense)).numpy()


def export_bundle(ranker: MultiTaskRanker, transform: FeatureTransform, valid: ModelInputs,
                  out: Path, *, metrics: dict, identity: dict, parity_rows: int, tolerance: float,
                  opset: int, seed: int, key: bytes | None = None,
                  reference_stats: Path | None = None) -> dict:
    """Export, check parity on `parity_rows` rows, write the bundle to `out` (signed with
    `key` when given; `reference_stats`: the training split's statistics, shipped in it);
    returns the parity result (raises ExportError when it fails)."""
    inputs, n_valid = parity_inputs(valid, transform, parity_rows, seed)
    reference = reference_scores(ranker, transform, inputs)
    with tempfile.TemporaryDirectory(prefix="mtlrec-export-") as tmp:
        onnx_file = to_onnx(ranker, transform, Path(tmp) / bundle.MODEL_FILE, opset)
        session = ort.InferenceSession(str(onnx_file), bundle.session_options(0),
                                       providers=["CPUExecutionProvider"])
        actual = session.run([bundle.SCORES], bundle.feeds(inputs))[0]
        result = parity.compare(reference, actual, bundle.score_columns(transform), tolerance) | {
            "validation_rows": n_valid, "random_rows": len(inputs) - n_valid,
            "torch": torch.__version__, "onnxruntime": ort.__version__, "opset": opset,
        }
        if not result["passed"]:
            raise ExportError(f"export parity check failed (PyTorch vs onnxruntime on {len(inputs):,} "
                              f"rows): max |diff| {result.get('max_abs_diff')} > {tolerance}; "
                              f"{result}")
        data = bundle.parity_frame(inputs, reference, transform)
        bundle.write(out, onnx_file, transform, metrics, result, data, identity, key, reference_stats)
    log.info("export: %s (parity max |diff| %.2e on %d rows)", out, result["max_abs_diff"], len(inputs))
    return result
