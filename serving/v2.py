"""The KServe Open Inference Protocol v2 (REST) for the served bundle: what its tensors
are, and how a request's tensors become the typed frame the transform encodes.

Inputs, one tensor per raw field of the bundle's feature spec, named like the field, all
with the same batch size B:
- categorical: BYTES [B] (UTF-8 text; INT32/INT64 ids are read as their decimal text);
- numeric: FP32 [B] (FP64, INT32 and INT64 are accepted too); NaN means missing, as null
  does in the row format (a tensor has no null), and ±inf follows the field's rule;
- multi-valued: BYTES [B] of elements joined by the field's separator, or BYTES [B, L]
  padded on the right plus an INT32/INT64 [B] input `<field>_lengths` with each row's
  count of real elements.
Outputs: one FP32 [B] tensor per task, the probability, named like the task.

A tensor's values come as JSON `data` (flat or nested, row-major; null means missing, as
in the row format) or in the binary tensor data extension that Triton and its clients
speak: the request's JSON header is followed by the raw tensors, its length given by the
`Inference-Header-Content-Length` header and each tensor's by its `binary_data_size`
parameter (BYTES elements length-prefixed, 4-byte little-endian). Outputs go back binary
when the request asks (`binary_data_output`, or per output `binary_data`).

The tensors become the columns of a `RawBatch`, checked under the row format's contract
(`serving.rows`): a numeric tensor is one numpy column, and a bad value is an error naming
the input and the row. Only the decoding of binary BYTES elements loops in Python. Any
error is a `ProtocolError`, which the server answers 400 with the protocol's error object
{"error": message}.
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass

import numpy as np

from mtlrec.features.folder import TaskInfo
from mtlrec.features.online import RawBatch
from mtlrec.features.spec import CategoricalField
from mtlrec.features.transform import FeatureTransform
from mtlrec.serving import jsonio
from mtlrec.serving import rows as rows_mod

LENGTHS_SUFFIX = "_lengths"  # `<field>_lengths`: the row counts of a padded multi-valued input
_NUMERIC = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8"}
_INTEGER = {"INT32": "<i4", "INT64": "<i8"}
_TEXT = frozenset({str, type(None)})  # the Python types JSON data may hold, per datatype
_INTEGERS = frozenset({int, type(None)})
_LENGTH_PREFIX = struct.Struct("<I")


class ProtocolError(ValueError):
    """A request the protocol or the feature spec rejects; the message names the input
    (and the row, for a bad value)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | list  # numeric: a numpy array; BYTES: a flat list of str (or None)
    binary: bool = False  # values from the binary extension: already of the datatype, valid text


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, Tensor]
    outputs: list[str] | None  # the requested outputs (None: every task)
    binary_outputs: set[str]  # the outputs to send as binary data


def metadata(name: str, versions: list[str], transform: FeatureTransform) -> dict:
    """The model metadata response: every input the spec needs and one output per task."""
    inputs = []
    for field in transform.spec.categorical:
        inputs.append({"name": field.name, "datatype": "BYTES", "shape": [-1]})
        if field.multi:
            inputs[-1]["parameters"] = {
                "separator": field.separator,
                "padded_form": f"BYTES [-1, -1] with {field.name}{LENGTHS_SUFFIX} INT64 [-1]"}
    inputs += [{"name": name, "datatype": "FP32", "shape": [-1]} for name in transform.numeric_names]
    outputs = [{"name": t.name, "datatype": "FP32", "shape": [-1]} if t.width == 1 else
               {"name": t.name, "datatype": "FP32", "shape": [-1, t.width], "parameters": {"classes": t.classes}}
               for t in transform.info.task_info]
    return {"name": name, "versions": versions, "platform": "onnxruntime_onnx", "inputs": inputs,
            "outputs": outputs}


def header_length(value: str) -> int:
    """The Inference-Header-Content-Length header's value."""
    if not (value.isascii() and value.isdigit()):
        raise ProtocolError(f"Inference-Header-Content-Length {value[:40]!r} is not a byte count")
    return int(value)


def parse(body: bytes, header_length: int | None) -> InferRequest:
    """An infer request's body (JSON, or JSON header + binary tensors) → its tensors."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length {header_length} does not fit the "
                            f"body of {len(body)} bytes")
    head, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        request = jsonio.loads(head, allow_nan=True)  # NaN: a missing FP32 value
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ProtocolError('expected an inference request object {"inputs": [...]}')
    inputs, offset = {}, 0
    for entry in request["inputs"]:
        tensor, offset = _tensor(entry, binary, offset)
        if tensor.name in inputs:
            raise ProtocolError(f"input '{tensor.name}' given twice")
        inputs[tensor.name] = tensor
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data after the last input's")
    outputs, binary_outputs = _requested(request)
    request_id = request.get("id")
    return InferRequest(None if request_id is None else str(request_id), inputs, outputs, binary_outputs)


def _tensor(entry: object, binary: bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError("each input needs a name, a datatype, a shape and its data")
    name, datatype, shape = entry["name"], entry.get("datatype"), entry.get("shape")
    if not isinstance(datatype, str) or (datatype != "BYTES" and datatype not in _NUMERIC):
        raise ProtocolError(f"input '{name}': datatype {datatype!r} is not one of BYTES, "
                            f"{', '.join(_NUMERIC)}")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise ProtocolError(f"input '{name}': shape {shape!r} is not [B] or [B, L]")
    count = math.prod(shape)
    size = _parameters(entry, f"input '{name}'").get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise ProtocolError(f"input '{name}': binary_data_size {size!r} runs past the body")
        chunk = binary[offset:offset + size]
        values = _bytes_elements(name, chunk, count) if datatype == "BYTES" else _numbers(name, chunk, datatype, count)
        return Tensor(name, datatype, tuple(shape), values, binary=True), offset + size
    if "data" not in entry:
        raise ProtocolError(f"input '{name}': no data and no binary_data_size")
    values = _flat(entry["data"], len(shape))
    if len(values) != count:
        raise ProtocolError(f"input '{name}': shape {shape} holds {count} values, data has {len(values)}")
    return Tensor(name, datatype, tuple(shape), values), offset


def _flat(data: object, ndim: int) -> list:
    """JSON data → a flat list: [B] data as it is, [B, L] data flat or nested by row (a
    nested value anywhere else is a value of the wrong type, which the checks name)."""
    if not isinstance(data, list):
        return [data]
    if ndim == 1 or not data or not isinstance(data[0], list):
        return data
    return [x for row in data for x in (row if isinstance(row, list) else (row,))]


def _numbers(name: str, chunk: bytes, datatype: str, count: int) -> np.ndarray:
    dtype = np.dtype(_NUMERIC[datatype])
    if len(chunk) != count * dtype.itemsize:
        raise ProtocolError(f"input '{name}': {len(chunk)} bytes of {datatype} for {count} values")
    return np.frombuffer(chunk, dtype=dtype)


def _bytes_elements(name: str, chunk: bytes, count: int) -> list[str]:
    """Length-prefixed elements → text; raises naming the input and the element's row.
    The elements are cut in a tight loop and decoded in one call (one decode per element
    costs as much again); anything irregular is decoded element by element, which names it."""
    out, at = [], 0
    unpack, append = _LENGTH_PREFIX.unpack_from, out.append
    try:
        for _ in range(count):
            at += 4
            n = unpack(chunk, at - 4)[0]
            append(chunk[at:at + n])
            at += n
    except struct.error:  # the data ends inside a length prefix
        return _bytes_elements_one_by_one(name, chunk, count)
    if at != len(chunk):
        return _bytes_elements_one_by_one(name, chunk, count)
    try:
        text = b"\x00".join(out).decode().split("\x00")
    except UnicodeDecodeError:
        return _bytes_elements_one_by_one(name, chunk, count)
    return text if len(text) == count else _bytes_elements_one_by_one(name, chunk, count)  # a NUL inside


def _bytes_elements_one_by_one(name: str, chunk: bytes, count: int) -> list[str]:
    out, at = [], 0
    for i in range(count):
        if at + 4 > len(chunk):
            raise ProtocolError(f"input '{name}', element {i}: the binary data ends early")
        (n,) = _LENGTH_PREFIX.unpack_from(chunk, at)
        element = chunk[at + 4:at + 4 + n]
        if len(element) != n:
            raise ProtocolError(f"input '{name}', element {i}: the binary data ends early")
        try:
            out.append(element.decode())
        except UnicodeDecodeError:
            raise ProtocolError(f"input '{name}', element {i}: not valid UTF-8") from None
        at += 4 + n
    if at != len(chunk):
        raise ProtocolError(f"input '{name}': {len(chunk) - at} bytes after its {count} elements")
    return out


def _parameters(entry: dict, where: str) -> dict:
    """An object's optional `parameters` object."""
    params = entry.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: parameters must be an object")
    return params


def _requested(request: dict) -> tuple[list[str] | None, set[str]]:
    """The outputs asked for, and which of them go back as binary data."""
    everything = bool(_parameters(request, "the request").get("binary_data_output", False))
    outputs = request.get("outputs")
    if outputs is None:
        return None, {"*"} if everything else set()
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise ProtocolError("outputs must be a list of objects with a name")
    names = [o["name"] for o in outputs]
    binary = {o["name"] for o in outputs
              if _parameters(o, f"output '{o['name']}'").get("binary_data", everything)}
    return names, binary


def to_batch(request: InferRequest, transform: FeatureTransform) -> RawBatch:
    """The request's tensors → the checked columns the transform encodes (`rows` contract);
    raises ProtocolError."""
    multi = {f.name: f for f in transform.spec.multi_fields}
    wanted = [f.name for f in transform.spec.categorical] + transform.numeric_names
    extra = sorted(set(request.inputs) - set(wanted) - {m + LENGTHS_SUFFIX for m in multi})
    if extra:
        raise ProtocolError(f"input '{extra[0]}' is not a field of the model (metadata lists its inputs)")
    absent = [n for n in wanted if n not in request.inputs]
    if absent:
        raise ProtocolError(f"input '{absent[0]}' is missing ({len(absent)} missing: {absent[:5]})")
    sizes = {t.shape[0] for t in request.inputs.values()}
    if len(sizes) > 1:
        raise ProtocolError(f"inputs disagree on the batch size: {sorted(sizes)}")
    try:
        categorical = {}
        for f in transform.spec.categorical:
            tensor = request.inputs[f.name]
            categorical[f.name] = (_lists(tensor, request.inputs.get(f.name + LENGTHS_SUFFIX), multi[f.name])
                                   if f.multi else _categories(tensor))
        numeric = _numeric([request.inputs[name] for name in transform.numeric_names],
                           sizes.pop() if sizes else 0)
        return rows_mod.check_finite(RawBatch(categorical, numeric), transform, 0)
    except rows_mod.RowError as exc:
        raise row_error(exc) from None


def row_error(exc: rows_mod.RowError) -> ProtocolError:
    """A row the model cannot score, in the protocol's words: the input and the row."""
    return ProtocolError(f"input '{exc.field}', row {exc.row}: {exc.message}")


def _single(tensor: Tensor) -> None:
    if len(tensor.shape) != 1:
        raise ProtocolError(f"input '{tensor.name}': shape {list(tensor.shape)} is not [B]")


def _categories(tensor: Tensor) -> list:
    """A single-valued categorical tensor → str / None per row."""
    _single(tensor)
    if tensor.datatype not in ("BYTES", *_INTEGER):
        raise ProtocolError(f"input '{tensor.name}': a categorical field is BYTES, not {tensor.datatype}")
    if isinstance(tensor.values, np.ndarray):  # binary INT32/INT64 ids
        return [str(v) for v in tensor.values.tolist()]
    if tensor.binary:  # BYTES decoded from UTF-8: text already
        return tensor.values
    _check_data(tensor)
    return rows_mod.category_text(tensor.values, tensor.name)


def _numeric(tensors: list[Tensor], rows: int) -> np.ndarray:
    """The numeric tensors → float64 [rows, D], NaN (or null in JSON data) for missing. JSON
    data of floating types is checked and converted for all tensors at once."""
    out = np.empty((rows, len(tensors)))
    as_json = []
    for j, tensor in enumerate(tensors):
        _single(tensor)
        if tensor.datatype == "BYTES":
            raise ProtocolError(f"input '{tensor.name}': a numeric field is FP32, not BYTES")
        if isinstance(tensor.values, np.ndarray):
            out[:, j] = tensor.values
        else:
            as_json.append(j)
    floating = [j for j in as_json if tensors[j].datatype in ("FP32", "FP64")]
    if floating:
        data = [tensors[j].values for j in floating]
        if set(map(type, itertools.chain.from_iterable(data))) <= rows_mod.NUMERIC_TYPES:
            try:
                out[:, floating] = np.array(data, dtype=np.float64).T  # null → NaN
                as_json = [j for j in as_json if tensors[j].datatype not in ("FP32", "FP64")]
            except OverflowError:
                pass  # an integer beyond float64: named below
    for j in as_json:
        _check_data(tensors[j])
        out[:, j] = rows_mod.numbers(tensors[j].values, tensors[j].name)
    return out


def _check_data(tensor: Tensor) -> None:
    """JSON data of the tensor's datatype: text for BYTES, numbers (integers for INT*);
    null is missing."""
    allowed = (_TEXT if tensor.datatype == "BYTES" else
               _INTEGERS if tensor.datatype in _INTEGER else rows_mod.NUMERIC_TYPES)
    if not set(map(type, tensor.values)) <= allowed:
        i = next(i for i, v in enumerate(tensor.values) if type(v) not in allowed)
        raise ProtocolError(f"input '{tensor.name}', row {i}: expected {tensor.datatype} data, "
                            f"got {rows_mod.kind_of(tensor.values[i])}")


def _lists(tensor: Tensor, lengths: Tensor | None, field: CategoricalField) -> list:
    """A multi-valued field: BYTES [B] joined strings, or [B, L] padded with row lengths →
    each row's list of elements (None: missing)."""
    if tensor.datatype != "BYTES":
        raise ProtocolError(f"input '{tensor.name}': a multi-valued field is BYTES, not {tensor.datatype}")
    if not tensor.binary:
        _check_data(tensor)
    if len(tensor.shape) == 1:
        if lengths is not None:
            raise ProtocolError(f"input '{lengths.name}' goes with a padded [B, L] '{tensor.name}' only")
        if not tensor.binary:
            rows_mod.check_text(tensor.values, tensor.name)
        return [rows_mod.elements(v, field, i) for i, v in enumerate(tensor.values)]
    if lengths is None:
        raise ProtocolError(f"input '{tensor.name}' is padded [B, L]: it needs "
                            f"'{tensor.name}{LENGTHS_SUFFIX}' INT64 [B]")
    if lengths.datatype not in _INTEGER or lengths.shape != tensor.shape[:1]:
        raise ProtocolError(f"input '{lengths.name}': expected INT32/INT64 [{tensor.shape[0]}]")
    if not isinstance(lengths.values, np.ndarray):
        _check_data(lengths)
        if None in lengths.values:
            i = lengths.values.index(None)
            raise ProtocolError(f"input '{lengths.name}', row {i}: expected an integer")
    counts = np.asarray(lengths.values, dtype=np.int64).tolist()
    width = tensor.shape[1]
    for i, n in enumerate(counts):
        if not 0 <= n <= width:
            raise ProtocolError(f"input '{lengths.name}', row {i}: length {n} is outside 0..{width}")
    values = tensor.values
    rows = [values[i * width:i * width + n] for i, n in enumerate(counts)]
    for i, row in enumerate([] if tensor.binary else rows):
        try:
            rows_mod.check_text(row, tensor.name)
        except rows_mod.RowError as exc:
            raise rows_mod.RowError(i, tensor.name, exc.message) from None
    return rows


def response(model: str, version: str, request: InferRequest, task_info: list[TaskInfo],
             scores: np.ndarray) -> tuple[bytes, int | None]:
    """The infer response for scores [B, W]: one output per task (FP32 [B], or [B, C] of
    class probabilities), its body, and the JSON header's length when binary outputs follow
    it (None: the body is JSON only)."""
    tasks = [t.name for t in task_info]
    names = tasks if request.outputs is None else request.outputs
    unknown = [n for n in names if n not in tasks]
    if unknown:
        raise ProtocolError(f"output '{unknown[0]}' is not a task of the model ({tasks})")
    starts = np.cumsum([0] + [t.width for t in task_info]).tolist()
    outputs, blobs = [], []
    for name in names:
        k = tasks.index(name)
        block = scores[:, starts[k]:starts[k + 1]]
        column = np.ascontiguousarray(block[:, 0] if block.shape[1] == 1 else block, dtype="<f4")
        entry = {"name": name, "datatype": "FP32", "shape": list(column.shape)}
        if name in request.binary_outputs or "*" in request.binary_outputs:
            blobs.append(column.tobytes())
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = column.reshape(-1).tolist()
        outputs.append(entry)
    head = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        head["id"] = request.id
    encoded = jsonio.dumps(head)
    if not blobs:
        return encoded, None
    return encoded + b"".join(blobs), len(encoded)
