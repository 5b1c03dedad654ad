"""The V2 REST tensor codec: JSON and binary bodies to ModelInferRequest and back, and its refusals."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from control_plane.errors import InvalidArgument
from control_plane.rest.v2_tensors import decode_request, encode_response, pack, unpack
from modelfleet.inference import grpc_service_pb2 as pb


def _decode(doc: dict[str, Any], binary: bytes = b"", *, with_header: bool | None = None):  # type: ignore[no-untyped-def]
    header = json.dumps(doc).encode()
    binary_form = bool(binary) if with_header is None else with_header
    return decode_request(header + binary, header_length=len(header) if binary_form else None, model_name="m",
                          model_version="2")


def test_json_data_becomes_raw_contents_bit_exact() -> None:
    x = np.array([[0.1, -2.5, 3.25e-8]], dtype=np.float32)
    ids = np.array([1, -(2**62), 2**63 - 1], dtype=np.int64)
    decoded = _decode({"id": "r1", "inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": x.tolist()},
        {"name": "ids", "shape": [3], "datatype": "INT64", "data": ids.tolist()},
    ]})  # fmt: skip
    req = decoded.request
    assert (req.model_name, req.model_version, req.id) == ("m", "2", "r1")
    assert [(t.name, t.datatype, list(t.shape)) for t in req.inputs] == [("x", "FP32", [1, 3]), ("ids", "INT64", [3])]
    assert req.raw_input_contents[0] == x.tobytes()
    assert req.raw_input_contents[1] == ids.tobytes()
    assert decoded.binary_outputs == {} and decoded.binary_default is False and decoded.timeout_s is None


def test_binary_inputs_are_cut_from_the_tail_in_input_order() -> None:
    a = np.arange(6, dtype=np.float32).tobytes()
    b = np.arange(2, dtype=np.int64).tobytes()
    decoded = _decode({
        "inputs": [
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": len(a)}},
            {"name": "b", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": len(b)}},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
        "parameters": {"binary_data_output": True, "timeout": 2_500_000, "priority": 1},
    }, a + b)  # fmt: skip
    assert list(decoded.request.raw_input_contents) == [a, b]
    assert not decoded.request.inputs[0].parameters  # binary_data_size is HTTP framing only
    assert [o.name for o in decoded.request.outputs] == ["y", "z"]
    assert decoded.binary_outputs == {"y": True, "z": False}
    assert decoded.binary_default is True
    assert decoded.timeout_s == 2.5
    assert "binary_data_output" not in decoded.request.parameters
    assert decoded.request.parameters["timeout"].int64_param == 2_500_000  # travels on, as tritonclient.grpc sends it
    assert decoded.request.parameters["priority"].int64_param == 1


def test_bytes_tensors_use_four_byte_length_prefixes() -> None:
    raw = pack("s", "BYTES", [["ab", ""], ["é", "xyz"]])
    assert raw == b"".join(struct.pack("<I", len(v)) + v for v in (b"ab", b"", "é".encode(), b"xyz"))
    assert unpack("s", "BYTES", raw) == ["ab", "", "é", "xyz"]


@pytest.mark.parametrize("datatype", ["BOOL", "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64", "UINT64",
                                      "FP16", "FP32", "FP64"])
def test_every_numeric_datatype_round_trips_like_numpy(datatype: str) -> None:
    np_type = {"BOOL": np.bool_, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype) or np.dtype(
        datatype.lower())
    values = np.array([1, 0, 1, 1] if datatype == "BOOL" else [0, 1, 2, 100], dtype=np_type)
    raw = pack("t", datatype, values.tolist())
    assert raw == values.tobytes()
    assert np.array_equal(np.array(unpack("t", datatype, raw), dtype=np_type), values)


@pytest.mark.parametrize(("doc", "message"), [
    ({"inputs": []}, "inputs must be a non-empty list"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP33", "data": [1]}]}, "input 'x': unknown datatype 'FP33'"),
    ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}, "input 'x': shape must be"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}]}, "input 'x': datatype INT32 takes integers, got 1.5"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}, "input 'x': datatype FP32 takes numbers"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}]}, "input 'x': value 300 out of range for UINT8"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}]}, "input 'x': datatype BOOL takes booleans"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "input 'x': no data"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1],
                  "parameters": {"shared_memory_region": "r"}}]}, "shared_memory_region is not supported"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
      "outputs": [{"name": "y", "parameters": {"classification": 3}}]}, "output 'y': parameters.classification"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "parameters": {"timeout": -1}},
     "parameters.timeout must be a non-negative integer of microseconds"),
    ({"id": 5, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, "id must be a string"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "parameters": {"p": [1]}}]},
     "input 'x': parameters.p must be a boolean, number or string"),
])  # fmt: skip
def test_bad_json_bodies_name_the_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(".", r"\.")):
        _decode(doc)


def test_binary_sizes_that_do_not_add_up_are_refused() -> None:
    tensor = {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
    with pytest.raises(InvalidArgument, match="input 'x': binary_data_size 8 runs past the binary data \\(4 bytes left\\)"):
        _decode({"inputs": [tensor]}, b"\0" * 4)
    with pytest.raises(InvalidArgument, match="holds 12 bytes after the JSON header, the inputs' binary_data_size add up to 8"):
        _decode({"inputs": [tensor]}, b"\0" * 12)
    with pytest.raises(InvalidArgument, match="Inference-Header-Content-Length: 99 is outside the body of 3 bytes"):
        decode_request(b"{}x", header_length=99, model_name="m", model_version="")
    with pytest.raises(InvalidArgument, match="the request body is not JSON"):
        decode_request(b"\xff{", header_length=None, model_name="m", model_version="")
    with pytest.raises(InvalidArgument, match="the request body must be a JSON object, got list"):
        decode_request(b"[]", header_length=None, model_name="m", model_version="")


def _response() -> pb.ModelInferResponse:
    y = np.array([[1.5, float("nan")]], dtype=np.float32)
    k = np.array([7, -8], dtype=np.int64)
    out = pb.ModelInferResponse(model_name="m", model_version="1", id="r1")
    out.outputs.add(name="y", datatype="FP32", shape=[1, 2])
    out.outputs.add(name="k", datatype="INT64", shape=[2])
    out.raw_output_contents.extend([y.tobytes(), k.tobytes()])
    return out


def test_binary_answer_puts_the_json_length_in_the_header() -> None:
    response = _response()
    encoded = encode_response(response, binary_outputs={"k": False}, binary_default=True)
    assert encoded.header_length is not None
    doc = json.loads(encoded.body[:encoded.header_length])
    assert doc["id"] == "r1" and doc["model_name"] == "m"
    y, k = doc["outputs"]
    assert y == {"name": "y", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
    assert encoded.body[encoded.header_length:] == response.raw_output_contents[0]
    assert k["data"] == [7, -8] and "parameters" not in k


def test_json_answer_has_no_header_length_and_reads_back_bit_exact() -> None:
    response = _response()
    encoded = encode_response(response, binary_outputs={}, binary_default=False)
    assert encoded.header_length is None
    y = json.loads(encoded.body)["outputs"][0]
    assert y["data"][1] == "nan"  # JSON has no NaN; numpy reads the string back
    assert np.array(y["data"], dtype=np.float32).tobytes() == response.raw_output_contents[0]


def test_typed_output_contents_answer_like_raw_ones() -> None:
    out = pb.ModelInferResponse(model_name="m")
    tensor = out.outputs.add(name="y", datatype="INT32", shape=[2])
    tensor.contents.int_contents.extend([3, -4])
    encoded = encode_response(out, binary_outputs={}, binary_default=True)
    assert encoded.header_length is not None
    assert encoded.body[encoded.header_length:] == np.array([3, -4], dtype=np.int32).tobytes()
