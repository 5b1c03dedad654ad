"""The KServe V2 REST tensor codec: an HTTP infer body <-> `ModelInferRequest` / `ModelInferResponse`.

Two body forms, as Triton serves them:

- JSON only: `{"id", "parameters", "inputs": [{"name", "shape", "datatype",
  "data"}], "outputs": [{"name", "parameters": {"binary_data": bool}}]}`,
  `data` flat or nested in row-major order (BYTES elements as strings).
- Triton's binary tensor data extension: the `Inference-Header-Content-Length`
  request header gives the JSON header's length; the tensors follow it in
  input order, each input naming its `binary_data_size` in its parameters
  (BYTES as Triton: each element a 4-byte little-endian length, then the
  bytes). Outputs are answered binary when their `binary_data` parameter is
  true, or when unlisted with the request parameter `binary_data_output`
  true; the answer then carries the JSON header's length in the same header.

Every input becomes `raw_input_contents`, so the gateway's strict validation
(modelfleet.wire.v2: datatype, shape, byte size naming the input with
expected and got) decides what a model accepts exactly as for gRPC, and raw
bytes pass through untouched: binary answers are bit-exact to gRPC's.
Encoding faults of the body itself (not JSON, a value that does not fit its
datatype, binary sizes that do not add up) are `InvalidArgument` naming the
field. Triton's `timeout` request parameter (microseconds) is read out for
the caller's deadline and travels on like the gRPC clients' one.

Pure functions: no I/O, no aiohttp, no numpy (struct packs little-endian).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from control_plane.errors import InvalidArgument
from modelfleet.inference import grpc_service_pb2 as pb

HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES = "BYTES"
# V2 datatype -> struct format character (little-endian throughout)
FORMATS: dict[str, str] = {
    "BOOL": "?", "INT8": "b", "UINT8": "B", "INT16": "h", "UINT16": "H", "FP16": "e",
    "INT32": "i", "UINT32": "I", "FP32": "f", "INT64": "q", "UINT64": "Q", "FP64": "d",
}  # fmt: skip
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_LENGTH = struct.Struct("<I")
# parameters that shape the HTTP exchange only; they never reach a worker
_HTTP_ONLY = frozenset({"binary_data_output"})
_UNSUPPORTED = ("shared_memory_region", "classification")


@dataclass(frozen=True)
class DecodedRequest:
    """An HTTP infer body read into the gRPC request it means, plus how to answer it."""

    request: pb.ModelInferRequest
    binary_outputs: dict[str, bool]  # output name -> answered binary (outputs the request lists)
    binary_default: bool  # for outputs the request does not list
    timeout_s: float | None  # Triton's `timeout` parameter, in seconds


@dataclass(frozen=True)
class EncodedResponse:
    """The HTTP answer body; `header_length` is set when binary tensors follow the JSON."""

    body: bytes
    header_length: int | None


def decode_request(body: bytes, *, header_length: int | None, model_name: str, model_version: str) -> DecodedRequest:
    """The ModelInferRequest an HTTP infer body means (see the module docstring).

    Raises:
        InvalidArgument: naming the field, for a body that does not encode a V2 request.
    """
    if header_length is None:
        header, binary = body, b""
    elif not 0 <= header_length <= len(body):
        raise InvalidArgument(f"{HEADER_LENGTH}: {header_length} is outside the body of {len(body)} bytes")
    else:
        header, binary = body[:header_length], body[header_length:]
    return decode_document(_json_object(header), binary=binary, model_name=model_name, model_version=model_version)


def decode_document(doc: dict[str, Any], *, binary: bytes, model_name: str, model_version: str) -> DecodedRequest:
    """The ModelInferRequest of an already parsed JSON header, `binary` the tensor bytes after it.

    Raises:
        InvalidArgument: naming the field, for a document that does not encode a V2 request.
    """
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument(f"id must be a string, got {type(request_id).__name__}")
    request.id = request_id
    params = _object(doc.get("parameters", {}), "parameters")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidArgument(f"parameters.binary_data_output must be a boolean, got {binary_default!r}")
    timeout_s = _timeout(params.get("timeout"))
    _parameters(request.parameters, {k: v for k, v in params.items() if k not in _HTTP_ONLY}, "parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("inputs must be a non-empty list of tensors")
    offset = 0
    for index, item in enumerate(inputs):
        offset = _input(request, _object(item, f"inputs[{index}]"), index, binary, offset)
    if offset != len(binary):
        raise InvalidArgument(f"the binary data holds {len(binary)} bytes after the JSON header, the inputs' "
                              f"binary_data_size add up to {offset}")
    return DecodedRequest(request, _outputs(request, doc.get("outputs", [])), binary_default, timeout_s)


def _json_object(text: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"the request body is not JSON: {exc}") from None
    return _object(doc, "the request body")


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"parameters.timeout must be a non-negative integer of microseconds, got {value!r}")
    return value / 1e6 if value else None


def _parameters(into: Any, params: dict[str, Any], where: str) -> None:
    for key, value in params.items():
        if isinstance(value, bool):
            into[key].bool_param = value
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**64:
                raise InvalidArgument(f"{where}.{key}: {value} does not fit 64 bits")
            if value < 2**63:
                into[key].int64_param = value
            else:
                into[key].uint64_param = value
        elif isinstance(value, float):
            into[key].double_param = value
        elif isinstance(value, str):
            into[key].string_param = value
        else:
            raise InvalidArgument(f"{where}.{key} must be a boolean, number or string, got {type(value).__name__}")


def _input(request: pb.ModelInferRequest, item: dict[str, Any], index: int, binary: bytes, offset: int) -> int:
    """Append input `index` to request (as raw_input_contents); returns the binary offset after it."""
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"inputs[{index}].name must be a non-empty string")
    datatype = item.get("datatype")
    if datatype != BYTES and datatype not in FORMATS:
        raise InvalidArgument(f"input '{name}': unknown datatype {datatype!r}, expected one of {[*FORMATS, BYTES]}")
    shape = item.get("shape")
    if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise InvalidArgument(f"input '{name}': shape must be a list of non-negative integers, got {shape!r}")
    params = _object(item.get("parameters", {}), f"input '{name}': parameters")
    for key in _UNSUPPORTED:
        if key in params:
            raise InvalidArgument(f"input '{name}': parameters.{key} is not supported here")
    size = params.pop("binary_data_size", None)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    _parameters(tensor.parameters, params, f"input '{name}': parameters")
    if size is not None:
        if "data" in item:
            raise InvalidArgument(f"input '{name}': both data and parameters.binary_data_size are set")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"input '{name}': parameters.binary_data_size must be a non-negative integer, got {size!r}")
        if offset + size > len(binary):
            raise InvalidArgument(f"input '{name}': binary_data_size {size} runs past the binary data "
                                  f"({len(binary) - offset} bytes left)")
        request.raw_input_contents.append(binary[offset:offset + size])
        return offset + size
    if "data" not in item:
        raise InvalidArgument(f"input '{name}': no data: send data or parameters.binary_data_size")
    request.raw_input_contents.append(pack(name, datatype, item["data"]))
    return offset


def _flatten(data: object, out: list[Any]) -> None:
    if isinstance(data, list):
        for item in data:
            _flatten(item, out)
    else:
        out.append(data)


def pack(name: str, datatype: str, data: object) -> bytes:
    """JSON tensor data (flat or nested, row-major) as the raw little-endian bytes of datatype."""
    values: list[Any] = []
    _flatten(data, values)
    if datatype == BYTES:
        parts: list[bytes] = []
        for value in values:
            if not isinstance(value, str):
                raise InvalidArgument(f"input '{name}': BYTES data must be strings, got {type(value).__name__}")
            raw = value.encode()
            parts += (_LENGTH.pack(len(raw)), raw)
        return b"".join(parts)
    for value in values:
        if not _fits_kind(datatype, value):
            raise InvalidArgument(f"input '{name}': datatype {datatype} takes {_kind(datatype)}, got {value!r}")
    try:
        return struct.pack(f"<{len(values)}{FORMATS[datatype]}", *values)
    except (struct.error, OverflowError):
        bad = next((v for v in values if not _packs(FORMATS[datatype], v)), values[0])
        raise InvalidArgument(f"input '{name}': value {bad!r} out of range for {datatype}") from None


def _kind(datatype: str) -> str:
    return "booleans" if datatype == "BOOL" else "numbers" if datatype in _FLOATS else "integers"


def _fits_kind(datatype: str, value: object) -> bool:
    if datatype == "BOOL":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) if datatype in _FLOATS else isinstance(value, int)


def _packs(fmt: str, value: object) -> bool:
    try:
        struct.pack(f"<{fmt}", value)
    except (struct.error, OverflowError):
        return False
    return True


def _outputs(request: pb.ModelInferRequest, outputs: object) -> dict[str, bool]:
    if not isinstance(outputs, list):
        raise InvalidArgument(f"outputs must be a list, got {type(outputs).__name__}")
    binary: dict[str, bool] = {}
    for index, item in enumerate(outputs):
        item = _object(item, f"outputs[{index}]")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"outputs[{index}].name must be a non-empty string")
        params = dict(_object(item.get("parameters", {}), f"output '{name}': parameters"))
        for key in _UNSUPPORTED:
            if key in params and params[key] not in (0, False):
                raise InvalidArgument(f"output '{name}': parameters.{key} is not supported here")
            params.pop(key, None)
        wanted = params.pop("binary_data", False)
        if not isinstance(wanted, bool):
            raise InvalidArgument(f"output '{name}': parameters.binary_data must be a boolean, got {wanted!r}")
        binary[name] = wanted
        _parameters(request.outputs.add(name=name).parameters, params, f"output '{name}': parameters")
    return binary


def encode_response(response: pb.ModelInferResponse, *, binary_outputs: dict[str, bool], binary_default: bool) -> EncodedResponse:
    """The HTTP answer for a worker's ModelInferResponse: JSON, then the binary outputs in output order."""
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = _parameters_json(response.parameters)
    chunks: list[bytes] = []
    outputs = []
    for index, tensor in enumerate(response.outputs):
        raw = output_raw(response, index)
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        params = _parameters_json(tensor.parameters)
        if binary_outputs.get(tensor.name, binary_default):
            params["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            out["data"] = unpack(tensor.name, tensor.datatype, raw)
        if params:
            out["parameters"] = params
        outputs.append(out)
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return EncodedResponse(header, None)
    return EncodedResponse(b"".join([header, *chunks]), len(header))


def _parameters_json(params: Any) -> dict[str, Any]:
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in params.items()
            if value.WhichOneof("parameter_choice")}


def output_raw(response: pb.ModelInferResponse, index: int) -> bytes:
    """Output `index` as raw little-endian bytes, whether the worker answered it raw or typed."""
    if index < len(response.raw_output_contents):
        return response.raw_output_contents[index]
    return _typed_raw(response.outputs[index])


def _typed_raw(tensor: pb.ModelInferResponse.InferOutputTensor) -> bytes:
    """Typed contents (a worker may answer so) as raw bytes, so both forms answer alike."""
    contents = tensor.contents
    if tensor.datatype == BYTES:
        return b"".join(_LENGTH.pack(len(v)) + v for v in contents.bytes_contents)
    fmt = FORMATS.get(tensor.datatype)
    if fmt is None:
        raise InvalidArgument(f"output '{tensor.name}': unknown datatype {tensor.datatype!r}")
    field = {"?": "bool_contents", "q": "int64_contents", "Q": "uint64_contents", "f": "fp32_contents",
             "d": "fp64_contents", "e": "", "b": "int_contents", "h": "int_contents", "i": "int_contents",
             "B": "uint_contents", "H": "uint_contents", "I": "uint_contents"}[fmt]
    values = list(getattr(contents, field)) if field else []
    return struct.pack(f"<{len(values)}{fmt}", *values)


# JSON has no NaN or infinity. Triton answers these strings, which numpy (so
# tritonclient's as_numpy) reads back; protobuf's JSON mapping (the CLI's
# `infer --json`, Elasticsearch's Jackson) spells them as below.
NUMPY_NONFINITE = ("nan", "inf", "-inf")
JSON_MAPPING_NONFINITE = ("NaN", "Infinity", "-Infinity")


def unpack(name: str, datatype: str, raw: bytes, *, nonfinite: tuple[str, str, str] = NUMPY_NONFINITE,
           lossy_bytes: bool = False) -> list[Any]:
    """Raw little-endian tensor bytes as the flat JSON data list (BYTES as UTF-8 strings).

    BYTES elements that are not UTF-8 are refused (the caller can ask for them
    binary), or with `lossy_bytes` decoded with replacement characters, for
    APIs that have no binary form."""
    if datatype == BYTES:
        strings: list[str] = []
        offset = 0
        while offset < len(raw):
            (length,) = _LENGTH.unpack_from(raw, offset)
            element = raw[offset + 4:offset + 4 + length]
            offset += 4 + length
            try:
                strings.append(element.decode(errors="replace" if lossy_bytes else "strict"))
            except UnicodeDecodeError:
                raise InvalidArgument(f"output '{name}' holds bytes that are not UTF-8: request it with "
                                      "parameters.binary_data true") from None
        return strings
    fmt = FORMATS[datatype]
    values: list[Any] = list(struct.unpack(f"<{len(raw) // struct.calcsize(fmt)}{fmt}", raw))
    if datatype in _FLOATS and any(not math.isfinite(v) for v in values):
        nan, inf, minus_inf = nonfinite
        return [v if math.isfinite(v) else (nan if math.isnan(v) else inf if v > 0 else minus_inf) for v in values]
    return values
