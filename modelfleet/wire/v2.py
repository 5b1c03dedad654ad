"""The KServe V2 request rules both processes enforce: one walk over a
`ModelInferRequest` against the model's tensor specs.

The gateway (control_plane.gateway) checks a parsed copy of the request
before it forwards the original bytes: `RequestRules.check` walks sizes and
counts and decodes no tensor. The worker (node_agent.worker.codec) calls
`RequestRules.walk`, the same walk, which also hands back each input as a
`CheckedInput` (its raw buffer, its typed values, its BYTES elements) for
the worker to turn into numpy arrays without another check.

The rules, in the order they are applied: the number of raw_input_contents
(one per input, when any is sent), unknown, repeated or missing inputs,
datatype, negative dimensions, rank and dimensions (-1 = any; an undeclared
TorchScript tensor takes any shape), raw and typed contents both set, byte
size = elements x element size (Triton's wording: "input 'x': byte size
mismatch, expected 32, got 40"), the 4-byte little-endian length prefixes of
BYTES, the typed contents field of the datatype and its element count, the
value range of narrow integer types, and requested outputs the model does
not have. Every failure is the caller's `error` class (its INVALID_ARGUMENT)
naming the input with expected and got.

One difference in wording, none in what is accepted: the check (the
gateway's) names a shape of more than 2**62 elements as overflowing before
the size comparison; the walk (the worker's) reaches the same refusal at the
size or count comparison, since no message holds that many elements.

No grpc here, and no numpy: pure functions and immutable lookups, safe on
any thread.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from google.protobuf.message import DecodeError

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
# narrow integer types: typed contents travel in 32-bit fields, so their range is checked
_RANGES: dict[str, tuple[int, int]] = {"INT8": (-128, 127), "INT16": (-32768, 32767), "UINT8": (0, 255), "UINT16": (0, 65535)}
_LENGTH = struct.Struct("<I")
MAX_ELEMENTS = 2**62  # far beyond any message; what "overflowing" means

ErrorClass = Callable[[str], Exception]


class TensorSpecLike(Protocol):
    """What the rules read of a tensor spec (node_agent.runtime.base.TensorSpec is one, `Spec` another)."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def any_shape(self) -> bool: ...


@dataclasses.dataclass(frozen=True)
class Spec:
    """One model input or output of a registry model."""

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


@dataclasses.dataclass(frozen=True, slots=True)
class CheckedInput:
    """One input that passed the rules.

    From `RequestRules.walk`, exactly one of `raw` (a raw_input_contents
    entry of a fixed-size type: `count` x element size bytes), `elements`
    (a BYTES tensor's elements, from raw or typed contents) and `values`
    (the typed contents field of its datatype, in range) is set; `check`
    leaves `elements` unset.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int
    raw: bytes | None = None
    elements: list[bytes] | None = None
    values: Sequence[Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CheckedRequest:
    """A request that passed the rules: its inputs in request order, and the
    output names to answer in response order (all of the model's when none is requested)."""

    inputs: tuple[CheckedInput, ...]
    outputs: tuple[str, ...]


def parse_request(data: bytes, *, error: ErrorClass) -> pb.ModelInferRequest:
    """The ModelInferRequest in `data`, or `error` naming why it does not parse."""
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise error(f"malformed ModelInferRequest: {exc}") from None


def split_bytes(name: str, buffer: bytes, count: int, *, error: ErrorClass) -> list[bytes]:
    """The `count` elements of a BYTES raw buffer (4-byte little-endian length + data, repeated).

    Raises:
        error: a truncated prefix, an element running past the end, or a
            different number of elements than `count`.
    """
    items: list[bytes] = []
    _walk_bytes(name, buffer, count, error=error, into=items)
    return items


def _walk_bytes(name: str, buffer: bytes, count: int, *, error: ErrorClass, into: list[bytes] | None) -> None:
    view = memoryview(buffer)
    offset, end, seen = 0, len(view), 0
    while offset < end:
        if end - offset < _LENGTH.size:
            raise error(f"input '{name}': malformed BYTES content: truncated length prefix at byte {offset} (element {seen})")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > end - offset:
            raise error(
                f"input '{name}': malformed BYTES content: element {seen} declares {length} bytes, only {end - offset} remain"
            )
        if into is not None:
            into.append(bytes(view[offset : offset + length]))
        offset += length
        seen += 1
        if seen > count:
            break
    if seen != count:
        got = f"more than {count}" if seen > count else str(seen)
        raise error(f"input '{name}': element count mismatch, expected {count}, got {got}")


class RequestRules:
    """The rules for one model's specs, with the lookups built once.

    Args:
        inputs: the model's input specs.
        outputs: the model's output specs (requested outputs must be among them).
        error: the class raised for a broken rule, called with the message;
            each process passes its own INVALID_ARGUMENT domain error.
    """

    def __init__(self, *, inputs: Sequence[TensorSpecLike], outputs: Sequence[TensorSpecLike], error: ErrorClass) -> None:
        self._inputs = tuple(inputs)
        self._specs = {s.name: s for s in self._inputs}
        self._known = tuple(s.name for s in outputs)
        self._known_set = frozenset(self._known)
        self._error = error

    @classmethod
    def of_model(cls, model: models_pb2.Model, *, error: ErrorClass) -> RequestRules:
        """The rules of a registry model (see `model_specs`)."""
        inputs, outputs = model_specs(model)
        return cls(inputs=inputs, outputs=outputs, error=error)

    def parse(self, data: bytes) -> pb.ModelInferRequest:
        """See `parse_request`."""
        return parse_request(data, error=self._error)

    def check(self, request: pb.ModelInferRequest) -> None:
        """Raise `error` unless `request` fits the specs; sizes and counts only, no tensor decoded."""
        self._walk(request, decode=False)

    def walk(self, request: pb.ModelInferRequest) -> CheckedRequest:
        """Raise `error` unless `request` fits the specs (the same rules as `check`);
        return its inputs, BYTES elements split, for decoding."""
        return self._walk(request, decode=True)

    def _walk(self, request: pb.ModelInferRequest, *, decode: bool) -> CheckedRequest:
        error = self._error
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise error(f"raw_input_contents has {len(raw)} entries, expected {len(request.inputs)} (one per input)")
        checked: dict[str, CheckedInput] = {}
        for index, tensor in enumerate(request.inputs):
            name = tensor.name
            spec = self._specs.get(name)
            if spec is None:
                raise error(f"unknown input '{name}'; the model's inputs are {sorted(self._specs)}")
            if name in checked:
                raise error(f"input '{name}' appears more than once")
            if tensor.datatype != spec.datatype:
                raise error(f"input '{name}': datatype mismatch, expected {spec.datatype}, got {tensor.datatype or '(none)'}")
            shape = tuple(tensor.shape)
            count = self._count(name, spec, shape, guard_overflow=not decode)
            typed = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
            if raw:
                if typed:
                    raise error(f"input '{name}': both raw_input_contents and typed contents are set")
                checked[name] = self._raw(name, spec, shape, count, raw[index], decode=decode)
            else:
                checked[name] = self._typed(name, spec, shape, count, tensor.contents, decode=decode)
        if len(checked) != len(self._inputs):
            missing = [s.name for s in self._inputs if s.name not in checked]
            raise error(f"missing input '{missing[0]}'" + (f" (and {missing[1:]})" if len(missing) > 1 else ""))
        return CheckedRequest(inputs=tuple(checked.values()), outputs=self._outputs(request))

    def _count(self, name: str, spec: TensorSpecLike, shape: tuple[int, ...], *, guard_overflow: bool) -> int:
        error = self._error
        if any(d < 0 for d in shape):
            raise error(f"input '{name}': negative dimension in shape {list(shape)}")
        count = math.prod(shape)
        if guard_overflow and count > MAX_ELEMENTS:
            raise error(f"input '{name}': shape {list(shape)} overflows: {count} elements")
        if spec.any_shape:
            return count
        fits = len(shape) == len(spec.shape) and all(s in (-1, d) for s, d in zip(spec.shape, shape, strict=True))
        if not fits:
            raise error(f"input '{name}': shape mismatch, expected {list(spec.shape)}, got {list(shape)}")
        return count

    def _raw(
        self, name: str, spec: TensorSpecLike, shape: tuple[int, ...], count: int, buffer: bytes, *, decode: bool
    ) -> CheckedInput:
        if spec.datatype == BYTES:
            elements: list[bytes] | None = [] if decode else None
            _walk_bytes(name, buffer, count, error=self._error, into=elements)
            return CheckedInput(name, spec.datatype, shape, count, elements=elements)
        expected = count * ELEMENT_BYTES.get(spec.datatype, 1)
        if len(buffer) != expected:
            raise self._error(f"input '{name}': byte size mismatch, expected {expected}, got {len(buffer)}")
        return CheckedInput(name, spec.datatype, shape, count, raw=buffer)

    def _typed(
        self,
        name: str,
        spec: TensorSpecLike,
        shape: tuple[int, ...],
        count: int,
        contents: pb.InferTensorContents,
        *,
        decode: bool,
    ) -> CheckedInput:
        error, datatype = self._error, spec.datatype
        field = TYPED_FIELD.get(datatype)
        if field is None:
            raise error(f"input '{name}': {datatype} data must be sent in raw_input_contents")
        for other in _ALL_FIELDS:
            if other != field and len(getattr(contents, other)):
                raise error(f"input '{name}': contents.{other} does not match datatype {datatype} (expected {field})")
        values = getattr(contents, field)
        if len(values) != count:
            raise error(f"input '{name}': element count mismatch, expected {count}, got {len(values)}")
        limits = _RANGES.get(datatype)
        if limits is not None and count:
            (lo, hi), low, high = limits, min(values), max(values)
            if low < lo or high > hi:
                raise error(f"input '{name}': value {low if low < lo else high} out of range for {datatype} ([{lo}, {hi}])")
        if datatype == BYTES:
            return CheckedInput(name, datatype, shape, count, elements=list(values) if decode else None)
        return CheckedInput(name, datatype, shape, count, values=values)

    def _outputs(self, request: pb.ModelInferRequest) -> tuple[str, ...]:
        wanted = tuple(o.name for o in request.outputs) if request.outputs else self._known
        for name in wanted:
            if name not in self._known_set:
                raise self._error(f"unknown requested output '{name}'; the model's outputs are {list(self._known)}")
        if len(set(wanted)) != len(wanted):
            raise self._error(f"requested outputs repeat a name: {list(wanted)}")
        return wanted
