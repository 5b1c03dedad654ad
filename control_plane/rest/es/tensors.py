"""The tensor form of `_infer` (pure: no I/O).

Elasticsearch's `{"docs": [{"text_field": ...}]}` feeds a tokenizer; these
models take tensors, so the body is the KServe V2 JSON tensor form:
`{"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]}`
with `data` flat or nested in row-major order. The answer is
`{"inference_results": [{"model_id", "model_version", "outputs": [{"name",
"shape", "datatype", "data"}]}]}`, data flat in row-major order."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from control_plane import errors
from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.wire.v2 import BYTES, TYPED_FIELD

_NUMPY: dict[str, Any] = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8,
    "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "FP16": np.float16, "FP32": np.float32,
    "FP64": np.float64,
}  # fmt: skip
_LENGTH = struct.Struct("<I")


def _flat(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [x for item in value for x in _flat(item)]
    return [value]


def _field(tensor: Any, i: int, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(tensor, dict) or key not in tensor:
        raise errors.InvalidArgument(f"inputs[{i}] needs [{key}]")
    value = tensor[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise errors.InvalidArgument(f"inputs[{i}].{key} has the wrong JSON type ({type(value).__name__})")
    return value


def _input(i: int, tensor: Any) -> pb.ModelInferRequest.InferInputTensor:
    name = _field(tensor, i, "name", str)
    datatype = _field(tensor, i, "datatype", str).upper()
    shape = _field(tensor, i, "shape", list)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise errors.InvalidArgument(f"input '{name}': shape must be a list of whole numbers, got {shape}")
    field = TYPED_FIELD.get(datatype)
    if field is None:
        supported = ", ".join(k for k, v in TYPED_FIELD.items() if v)
        raise errors.InvalidArgument(f"input '{name}': datatype {datatype} has no JSON form; use one of {supported}")
    data = _flat(_field(tensor, i, "data", list))
    out = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    try:
        if datatype == BYTES:
            out.contents.bytes_contents.extend(d.encode() if isinstance(d, str) else bytes(d) for d in data)
        else:
            getattr(out.contents, field).extend(data)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidArgument(f"input '{name}': data does not fit {datatype}: {exc}") from None
    return out


def infer_request(model_id: str, body: dict[str, Any]) -> pb.ModelInferRequest:
    """The V2 request of an `_infer` body (refusing the text `docs` form with what to send instead)."""
    if "docs" in body and "inputs" not in body:
        raise errors.InvalidArgument(
            "[docs] is for text models with a tokenizer; these models take tensors: send "
            '{"inputs": [{"name": ..., "shape": [...], "datatype": "FP32", "data": [...]}]}'
        )
    unknown = sorted(set(body) - {"inputs", "outputs", "id"})
    if unknown:
        raise errors.InvalidArgument(f"unknown field(s) in the _infer body: {', '.join(unknown)}; expected inputs, outputs")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise errors.InvalidArgument("[inputs] must be a non-empty list of tensors")
    req = pb.ModelInferRequest(model_name=model_id, id=str(body.get("id", "")))
    req.inputs.extend(_input(i, t) for i, t in enumerate(inputs))
    for i, wanted in enumerate(body.get("outputs") or []):
        req.outputs.add(name=_field(wanted, i, "name", str))
    return req


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _bytes_items(raw: bytes) -> list[bytes]:
    items, pos = [], 0
    while pos + 4 <= len(raw):
        (n,) = _LENGTH.unpack_from(raw, pos)
        items.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    return items


def _output_data(resp: pb.ModelInferResponse, index: int) -> list[Any]:
    out = resp.outputs[index]
    datatype = out.datatype.upper()
    if index < len(resp.raw_output_contents):
        raw = resp.raw_output_contents[index]
        if datatype == BYTES:
            values: list[Any] = _bytes_items(raw)
        else:
            values = np.frombuffer(raw, dtype=np.dtype(_NUMPY[datatype]).newbyteorder("<")).tolist()
    else:
        values = list(getattr(out.contents, TYPED_FIELD.get(datatype) or "fp32_contents"))
    if datatype == BYTES:
        return [v.decode("utf-8", errors="replace") for v in values]
    return [_json_number(v) for v in values]


def parse_answer(reply: bytes) -> pb.ModelInferResponse:
    return pb.ModelInferResponse.FromString(reply)


def infer_answer(resp: pb.ModelInferResponse) -> dict[str, Any]:
    """`{"inference_results": [...]}` of a V2 answer."""
    outputs = [{"name": o.name, "shape": list(o.shape), "datatype": o.datatype, "data": _output_data(resp, i)}
               for i, o in enumerate(resp.outputs)]
    return {"inference_results": [{"model_id": resp.model_name, "model_version": resp.model_version, "outputs": outputs}]}
