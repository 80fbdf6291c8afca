"""The v2 protocol's tensors (serving.v2), written by the real v2 client (tritonclient's
HTTP request and response codecs, JSON and binary): a request decodes to exactly the
rows the row format gives for the same rows, bad tensors are named by input and
row, and responses read back through the client's parser. The server end to end is in
test_serving.py."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import tritonclient.http as triton

from mtlrec.features.ingest import ingest
from mtlrec.features.online import OnlineTransform
from mtlrec.features.spec import DataSpec
from mtlrec.features.transform import FeatureTransform
from mtlrec.features.folder import TaskInfo
from mtlrec.serving import rows, v2

ROWS = [{"shop": "s0", "tags": "a|b", "price": 1.5}, {"shop": "s1", "tags": None, "price": None},
        {"shop": "never-seen", "tags": "c|b|a|d", "price": 3.0}, {"shop": None, "tags": "b", "price": -2.0}]


@pytest.fixture(scope="module")
def transform(tmp_path_factory) -> FeatureTransform:
    root = tmp_path_factory.mktemp("v2")
    pl.DataFrame({"shop": ["s0", "s1", "s2"] * 4, "tags": ["a|b", "b", "c|a"] * 4,
                  "price": [float(i) for i in range(12)], "click": [0, 1] * 6}).write_csv(root / "logs.csv")
    spec = DataSpec.model_validate({
        "name": "lists", "source": {"train": str(root / "logs.csv")},
        "categorical": [{"name": "shop"}, {"name": "tags", "multi": True, "separator": "|", "max_len": 3}],
        "numeric": [{"name": "price"}], "labels": [{"name": "ctr", "column": "click"}],
        "split": {"method": "tail", "valid_fraction": 0.25}})
    return FeatureTransform.load(ingest(spec, root / "features").artifacts_dir)


def _inputs(binary: bool, padded: bool = False) -> list[triton.InferInput]:
    """ROWS as a v2 client sends them: BYTES text, FP32 numbers (NaN: missing)."""
    shop = np.array([r["shop"] or "" for r in ROWS], dtype=object)
    price = np.array([np.nan if r["price"] is None else r["price"] for r in ROWS], dtype=np.float32)
    tensors = [("shop", shop, "BYTES"), ("price", price, "FP32")]
    if padded:
        lists = [(r["tags"] or "").split("|") if r["tags"] else [] for r in ROWS]
        width = max(map(len, lists))
        tensors += [("tags", np.array([t + [""] * (width - len(t)) for t in lists], dtype=object), "BYTES"),
                    ("tags_lengths", np.array([len(t) for t in lists], dtype=np.int64), "INT64")]
    else:
        tensors.append(("tags", np.array([r["tags"] or "" for r in ROWS], dtype=object), "BYTES"))
    out = []
    for name, values, datatype in tensors:
        tensor = triton.InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values, binary_data=binary)
        out.append(tensor)
    return out


def _decoded(inputs: list[triton.InferInput], transform: FeatureTransform, **kwargs):
    body, header = triton.InferenceServerClient.generate_request_body(inputs, **kwargs)
    return v2.to_batch(v2.parse(body, header), transform)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_a_clients_tensors_encode_exactly_as_the_same_rows_in_the_row_format(transform, binary, padded):
    # the row format's nulls are a v2 client's empty strings (categorical) and NaN (numeric)
    online = OnlineTransform(transform)
    expected = online.encode(rows.from_json([
        {**r, "shop": r["shop"] or "", "tags": r["tags"] or ""} for r in ROWS], transform))
    got = online.encode(_decoded(_inputs(binary, padded), transform))
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.lengths, expected.lengths)
    np.testing.assert_array_equal(got.dense, expected.dense)
    assert got.ids[2, 0] != got.ids[0, 0]  # the unseen shop is OOV, not s0


def _request(inputs: list[dict], **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


GOOD = [{"name": "shop", "datatype": "BYTES", "shape": [2], "data": ["s0", "s1"]},
        {"name": "tags", "datatype": "BYTES", "shape": [2], "data": ["a", "b|c"]},
        {"name": "price", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}]


def _with(name: str, **changes) -> list[dict]:
    return [dict(t, **changes) if t["name"] == name else t for t in GOOD]


@pytest.mark.parametrize("inputs, message", [
    (GOOD[:2], "input 'price' is missing"),
    ([*GOOD, {"name": "age", "datatype": "FP32", "shape": [2], "data": [1, 2]}],
     "input 'age' is not a field of the model"),
    (_with("price", datatype="BYTES", data=["1", "2"]), "input 'price': a numeric field is FP32, not BYTES"),
    (_with("shop", datatype="FP32", data=[1.0, 2.0]), "input 'shop': a categorical field is BYTES, not FP32"),
    (_with("price", data=[1.0, "2"]), "input 'price', row 1: expected FP32 data, got a string"),
    (_with("shop", data=["s0", 7]), "input 'shop', row 1: expected BYTES data, got int"),
    (_with("price", data=[1.0]), "input 'price': shape [2] holds 2 values, data has 1"),
    (_with("price", shape=[3], data=[1.0, 2.0, 3.0]), "inputs disagree on the batch size: [2, 3]"),
    (_with("tags", data=["a", "b||c"]), "input 'tags', row 1: empty element in the list 'b||c'"),
    (_with("price", datatype="INT8"), "input 'price': datatype 'INT8' is not one of BYTES"),
    (_with("price", shape=[2, 1, 1]), "input 'price': shape [2, 1, 1] is not [B] or [B, L]"),
    (_with("tags", shape=[2, 1]), "input 'tags' is padded [B, L]: it needs 'tags_lengths' INT64 [B]"),
    ([*_with("tags", shape=[2, 1]), {"name": "tags_lengths", "datatype": "INT64", "shape": [2], "data": [1, 2]}],
     "input 'tags_lengths', row 1: length 2 is outside 0..1"),
])
def test_bad_tensors_are_answered_naming_the_input_and_the_row(transform, inputs, message):
    with pytest.raises(v2.ProtocolError) as caught:
        v2.to_batch(v2.parse(_request(inputs), None), transform)
    assert message in str(caught.value)


def test_non_finite_numbers_follow_the_fields_rule(transform):
    """price rejects non-finite numbers (the spec's default), as the row format does."""
    price = triton.InferInput("price", [2], "FP32")
    price.set_data_from_numpy(np.array([1.0, np.inf], dtype=np.float32))
    shop, tags = (triton.InferInput(n, [2], "BYTES") for n in ("shop", "tags"))
    for t in (shop, tags):
        t.set_data_from_numpy(np.array(["a", "b"], dtype=object))
    with pytest.raises(v2.ProtocolError, match="input 'price', row 1: non-finite number inf"):
        _decoded([shop, tags, price], transform)


@pytest.mark.parametrize("body, header, message", [
    (b"{", None, "invalid JSON"),
    (b'{"inputs": 3}', None, "expected an inference request object"),
    (_request([dict(GOOD[0], data=None, parameters={"binary_data_size": 9})]), None,
     "input 'shop': binary_data_size 9 runs past the body"),
    (b'{"inputs": []}xx', 14, "2 bytes of binary data after the last input's"),
    (b'{"inputs": []}', 99, "Inference-Header-Content-Length 99 does not fit the body of 14 bytes"),
])
def test_malformed_bodies_are_protocol_errors(body, header, message):
    with pytest.raises(v2.ProtocolError, match=message):
        v2.parse(body, header)


def test_binary_bytes_that_end_early_or_are_not_utf8_name_the_element():
    head = {"name": "shop", "datatype": "BYTES", "shape": [2]}
    for blob, message in [(b"\x02\x00\x00\x00s0\x05\x00\x00\x00s1", "element 1: the binary data ends early"),
                          (b"\x02\x00\x00\x00s0\x01\x00\x00\x00\xff", "element 1: not valid UTF-8")]:
        header = json.dumps({"inputs": [dict(head, parameters={"binary_data_size": len(blob)})]}).encode()
        with pytest.raises(v2.ProtocolError, match=f"input 'shop', {message}"):
            v2.parse(header + blob, len(header))


@pytest.mark.parametrize("outputs, binary", [(None, set()), (None, {"*"}), (["ctcvr"], {"ctcvr"}),
                                             (["ctr", "ctcvr"], {"ctr"})])
def test_responses_read_back_through_the_clients_parser(outputs, binary):
    scores = np.array([[0.25, 0.125], [0.5, 1e-7], [0.75, 0.3]])
    request = v2.InferRequest("req-7", {}, outputs, binary)
    body, header = v2.response("m", "3", request, [TaskInfo("ctr"), TaskInfo("ctcvr")], scores)
    result = triton.InferenceServerClient.parse_response_body(body, header_length=header)
    assert result.get_response()["model_version"] == "3" and result.get_response()["id"] == "req-7"
    for name in outputs or ["ctr", "ctcvr"]:
        np.testing.assert_array_equal(result.as_numpy(name), scores[:, ["ctr", "ctcvr"].index(name)].astype(np.float32))
    with pytest.raises(v2.ProtocolError, match="output 'cvr' is not a task of the model"):
        v2.response("m", "3", v2.InferRequest(None, {}, ["cvr"], set()), [TaskInfo("ctr"), TaskInfo("ctcvr")], scores)


@pytest.mark.parametrize("binary", [set(), {"*"}])
def test_a_multiclass_output_is_one_tensor_of_class_probabilities_per_row(binary):
    tasks = [TaskInfo("dwell", "regression"), TaskInfo("intent", "multiclass", classes=["a", "b", "c"])]
    scores = np.array([[12.5, 0.2, 0.3, 0.5], [3.0, 0.6, 0.3, 0.1]], np.float32)
    body, header = v2.response("m", "1", v2.InferRequest(None, {}, None, binary), tasks, scores)
    result = triton.InferenceServerClient.parse_response_body(body, header_length=header)
    np.testing.assert_array_equal(result.as_numpy("dwell"), scores[:, 0])
    np.testing.assert_array_equal(result.as_numpy("intent"), scores[:, 1:])  # [2, 3]


def test_metadata_lists_every_input_the_spec_needs_and_one_output_per_task(transform):
    meta = v2.metadata("shop-ranker", ["4"], transform)
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("shop", "BYTES"), ("tags", "BYTES"),
                                                                    ("price", "FP32")]
    assert meta["inputs"][1]["parameters"]["separator"] == "|"
    assert meta["outputs"] == [{"name": "ctr", "datatype": "FP32", "shape": [-1]}]
    assert meta["name"] == "shop-ranker" and meta["versions"] == ["4"]
