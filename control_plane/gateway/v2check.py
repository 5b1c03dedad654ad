"""Strict KServe V2 request validation at the gateway, before a call is
routed: a malformed request never reaches a worker, and the model runs 0
times for it.

The gateway forwards the client's original bytes (it never re-encodes), so
validation parses a copy with the generated message class (upb, in C) and
checks it against the tensor specs the registry recorded for the model the
call is routed to. Only sizes and counts are checked — no tensor is
decoded — so the cost is one parse plus a walk over the inputs; for BYTES
inputs the 4-byte length prefixes are walked over a memoryview.

The checks and their messages are the worker's (node_agent/worker/codec.py;
the two processes share only the protos, so the rules are written twice and
tests/test_security.py runs the same table against both): unknown, repeated
or missing inputs, datatype, rank and dimensions (-1 = any), negative or
overflowing dimensions, byte size = elements x element size, raw and typed
contents both set, the number of raw_input_contents, typed element counts,
BYTES length prefixes, and requested outputs the model does not have. Every
failure is InvalidArgument naming the input with expected and got.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from control_plane.errors import InvalidArgument
from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.v1 import common_pb2, models_pb2

BYTES = "BYTES"
ELEMENT_BYTES: dict[str, int] = {
    "BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2,
    "INT32": 4, "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8,
}  # fmt: skip
# V2 datatype -> the InferTensorContents field that carries it (FP16 has none).
TYPED_FIELD: dict[str, str | None] = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP16": None, "FP32": "fp32_contents", "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}  # fmt: skip
_ALL_FIELDS = tuple(sorted({f for f in TYPED_FIELD.values() if f}))
_LENGTH = struct.Struct("<I")
MAX_ELEMENTS = 2**62  # far beyond any message; what "overflowing" means


@dataclasses.dataclass(frozen=True)
class Spec:
    """One model input or output as the gateway checks it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    any_shape: bool = False  # undeclared TorchScript tensor: any rank


def model_specs(model: models_pb2.Model) -> tuple[tuple[Spec, ...], tuple[Spec, ...]]:
    """(inputs, outputs) of a registry model; an empty TorchScript shape accepts any shape."""
    torchscript = model.format == common_pb2.MODEL_FORMAT_TORCHSCRIPT

    def convert(specs: Sequence[common_pb2.TensorSpec]) -> tuple[Spec, ...]:
        return tuple(Spec(s.name, s.datatype, tuple(s.shape), any_shape=torchscript and not s.shape) for s in specs)

    return convert(model.inputs), convert(model.outputs)


def parse_request(data: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"malformed ModelInferRequest: {exc}") from None


def _check_shape(name: str, spec: Spec, shape: tuple[int, ...]) -> int:
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input '{name}': negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidArgument(f"input '{name}': shape {list(shape)} overflows: {count} elements")
    if spec.any_shape:
        return count
    fits = len(shape) == len(spec.shape) and all(s in (-1, d) for s, d in zip(spec.shape, shape, strict=True))
    if not fits:
        expected = str(list(spec.shape))
        raise InvalidArgument(f"input '{name}': shape mismatch, expected {expected}, got {list(shape)}")
    return count


def _check_bytes(name: str, buffer: bytes, count: int) -> None:
    view = memoryview(buffer)
    offset, end, seen = 0, len(view), 0
    while offset < end:
        if end - offset < _LENGTH.size:
            raise InvalidArgument(
                f"input '{name}': malformed BYTES content: truncated length prefix at byte {offset} (element {seen})"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > end - offset:
            raise InvalidArgument(
                f"input '{name}': malformed BYTES content: element {seen} declares {length} bytes, "
                f"only {end - offset} remain"
            )
        offset += length
        seen += 1
        if seen > count:
            break
    if seen != count:
        got = f"more than {count}" if seen > count else str(seen)
        raise InvalidArgument(f"input '{name}': element count mismatch, expected {count}, got {got}")


def _check_typed(name: str, spec: Spec, count: int, contents: pb.InferTensorContents) -> None:
    field = TYPED_FIELD.get(spec.datatype)
    if field is None:
        raise InvalidArgument(f"input '{name}': {spec.datatype} data must be sent in raw_input_contents")
    for other in _ALL_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise InvalidArgument(
                f"input '{name}': contents.{other} does not match datatype {spec.datatype} (expected {field})"
            )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidArgument(f"input '{name}': element count mismatch, expected {count}, got {len(values)}")
    size = ELEMENT_BYTES.get(spec.datatype, 0)
    if spec.datatype in ("INT8", "INT16", "UINT8", "UINT16") and count:
        low, high = min(values), max(values)
        bits = 8 * size
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if spec.datatype.startswith("INT") else (0, 2**bits - 1)
        if low < lo or high > hi:
            bad = low if low < lo else high
            raise InvalidArgument(f"input '{name}': value {bad} out of range for {spec.datatype} ([{lo}, {hi}])")


def validate(request: pb.ModelInferRequest, *, inputs: Sequence[Spec], outputs: Sequence[Spec]) -> None:
    """Raise InvalidArgument unless request fits the model's specs (see the module docstring)."""
    specs = {s.name: s for s in inputs}
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries, expected {len(request.inputs)} (one per input)"
        )
    seen: set[str] = set()
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        spec = specs.get(name)
        if spec is None:
            raise InvalidArgument(f"unknown input '{name}'; the model's inputs are {sorted(specs)}")
        if name in seen:
            raise InvalidArgument(f"input '{name}' appears more than once")
        seen.add(name)
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"input '{name}': datatype mismatch, expected {spec.datatype}, got {tensor.datatype or '(none)'}"
            )
        count = _check_shape(name, spec, tuple(tensor.shape))
        typed = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
        if raw:
            if typed:
                raise InvalidArgument(f"input '{name}': both raw_input_contents and typed contents are set")
            buffer = raw[index]
            if spec.datatype == BYTES:
                _check_bytes(name, buffer, count)
            else:
                expected = count * ELEMENT_BYTES.get(spec.datatype, 1)
                if len(buffer) != expected:
                    raise InvalidArgument(f"input '{name}': byte size mismatch, expected {expected}, got {len(buffer)}")
        else:
            _check_typed(name, spec, count, tensor.contents)
    missing = [s.name for s in inputs if s.name not in seen]
    if missing:
        raise InvalidArgument(f"missing input '{missing[0]}'" + (f" (and {missing[1:]})" if len(missing) > 1 else ""))
    known = [s.name for s in outputs]
    wanted = [o.name for o in request.outputs]
    for name in wanted:
        if name not in known:
            raise InvalidArgument(f"unknown requested output '{name}'; the model's outputs are {known}")
    if len(set(wanted)) != len(wanted):
        raise InvalidArgument(f"requested outputs repeat a name: {wanted}")
