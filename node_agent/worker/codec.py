"""KServe V2 tensors <-> numpy: strict request decoding, response encoding.

Decoding checks everything before a call is queued, so a bad request never
reaches the model: unknown, repeated or missing inputs, datatype, rank and
dimensions against the spec (-1 = any), negative dimensions, byte size =
product(shape) x element size (Triton's wording: "input 'x': byte size
mismatch, expected 32, got 40"), raw and typed contents both set,
raw_input_contents count, element counts of typed contents, value ranges of
narrow integer types, and the 4-byte little-endian length prefixes of BYTES.
Every failure raises `InvalidArgument` naming the input with expected and got.

The fast path is raw_input_contents: `np.frombuffer` over the request bytes
(no copy, read-only) reshaped to the request shape. Outputs always go back as
raw_output_contents. Pure functions, no shared state: safe on any thread.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import time
from collections.abc import Sequence

import numpy as np

from modelfleet.inference import grpc_service_pb2 as pb
from node_agent.runtime.base import TensorSpec
from node_agent.runtime.dtypes import BYTES, numpy_dtype, v2_datatype
from node_agent.worker.errors import InvalidArgument

# V2 datatype -> the InferTensorContents field that carries it (FP16 has none).
_TYPED_FIELD: dict[str, str | None] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP16": None,
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
_ALL_FIELDS = tuple(sorted({f for f in _TYPED_FIELD.values() if f}))
_LENGTH = struct.Struct("<I")


@dataclasses.dataclass(frozen=True)
class InferRequest:
    """A decoded, validated ModelInfer request.

    Attributes:
        id: the client's request id, echoed back.
        inputs: every model input by name.
        outputs: the output names to return, in response order.
        decode_ns: time spent decoding and validating.
    """

    id: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    decode_ns: int = 0


def _shape_text(spec: TensorSpec) -> str:
    return "any shape" if spec.any_shape else str(list(spec.shape))


def _check_shape(name: str, spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input '{name}': negative dimension in shape {list(shape)}")
    if spec.any_shape:
        return
    fits = len(shape) == len(spec.shape) and all(s in (-1, d) for s, d in zip(spec.shape, shape, strict=True))
    if not fits:
        raise InvalidArgument(f"input '{name}': shape mismatch, expected {_shape_text(spec)}, got {list(shape)}")


def deserialize_bytes(name: str, buffer: bytes, count: int) -> np.ndarray:
    """Split a BYTES raw buffer (4-byte little-endian length + data, repeated)
    into a 1-D object array of `count` bytes elements.

    Raises:
        InvalidArgument: a truncated prefix, an element running past the end,
            or a different number of elements than `count`.
    """
    view = memoryview(buffer)
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < _LENGTH.size:
            raise InvalidArgument(
                f"input '{name}': malformed BYTES content: truncated length prefix at byte {offset} "
                f"(element {len(items)})"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > end - offset:
            raise InvalidArgument(
                f"input '{name}': malformed BYTES content: element {len(items)} declares {length} bytes, "
                f"only {end - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
        if len(items) > count:
            break
    if len(items) != count:
        got = f"more than {count}" if len(items) > count else str(len(items))
        raise InvalidArgument(f"input '{name}': element count mismatch, expected {count}, got {got}")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor as length-prefixed elements (str elements as UTF-8)."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _from_raw(name: str, spec: TensorSpec, shape: tuple[int, ...], count: int, buffer: bytes) -> np.ndarray:
    if spec.datatype == BYTES:
        return deserialize_bytes(name, buffer, count).reshape(shape)
    dtype = numpy_dtype(spec.datatype)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidArgument(f"input '{name}': byte size mismatch, expected {expected}, got {len(buffer)}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _from_typed(
    name: str, spec: TensorSpec, shape: tuple[int, ...], count: int, contents: pb.InferTensorContents
) -> np.ndarray:
    field = _TYPED_FIELD[spec.datatype]
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
    if spec.datatype == BYTES:
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    dtype = numpy_dtype(spec.datatype)
    if dtype.kind in "iu" and dtype.itemsize < 4 and count:
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(dtype)
        low, high = int(wide.min()), int(wide.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidArgument(
                f"input '{name}': value {bad} out of range for {spec.datatype} ([{info.min}, {info.max}])"
            )
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


class RequestDecoder:
    """`decode_infer_request` for one model, with its spec lookups built once
    (the worker's servicer keeps one; the profile showed them per call)."""

    def __init__(self, *, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self._inputs = tuple(inputs)
        self._specs = {s.name: s for s in inputs}
        self._known = tuple(s.name for s in outputs)
        self._known_set = frozenset(self._known)

    def decode(self, request: pb.ModelInferRequest) -> InferRequest:
        """See `decode_infer_request`."""
        started = time.perf_counter_ns()
        specs = self._specs
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise InvalidArgument(
                f"raw_input_contents has {len(raw)} entries, expected {len(request.inputs)} (one per input)"
            )
        decoded: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(request.inputs):
            name = tensor.name
            spec = specs.get(name)
            if spec is None:
                raise InvalidArgument(f"unknown input '{name}'; the model's inputs are {sorted(specs)}")
            if name in decoded:
                raise InvalidArgument(f"input '{name}' appears more than once")
            if tensor.datatype != spec.datatype:
                raise InvalidArgument(
                    f"input '{name}': datatype mismatch, expected {spec.datatype}, got {tensor.datatype or '(none)'}"
                )
            shape = tuple(tensor.shape)
            _check_shape(name, spec, shape)
            count = math.prod(shape)
            typed = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
            if raw:
                if typed:
                    raise InvalidArgument(f"input '{name}': both raw_input_contents and typed contents are set")
                decoded[name] = _from_raw(name, spec, shape, count, raw[index])
            else:
                decoded[name] = _from_typed(name, spec, shape, count, tensor.contents)
        if len(decoded) != len(self._inputs):
            missing = [s.name for s in self._inputs if s.name not in decoded]
            raise InvalidArgument(
                f"missing input '{missing[0]}'" + (f" (and {missing[1:]})" if len(missing) > 1 else "")
            )
        wanted = tuple(o.name for o in request.outputs) if request.outputs else self._known
        for name in wanted:
            if name not in self._known_set:
                raise InvalidArgument(f"unknown requested output '{name}'; the model's outputs are {list(self._known)}")
        if len(set(wanted)) != len(wanted):
            raise InvalidArgument(f"requested outputs repeat a name: {list(wanted)}")
        return InferRequest(id=request.id, inputs=decoded, outputs=wanted, decode_ns=time.perf_counter_ns() - started)


def decode_infer_request(
    request: pb.ModelInferRequest, *, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> InferRequest:
    """Validate `request` against the model's specs and decode its tensors.

    Args:
        request: the ModelInferRequest as received (model name already checked).
        inputs: the model's input specs.
        outputs: the model's output specs (requested outputs must be among them).

    Raises:
        InvalidArgument: see the module docstring.
    """
    return RequestDecoder(inputs=inputs, outputs=outputs).decode(request)


def encode_infer_response(
    outputs: dict[str, np.ndarray], *, model_name: str, model_version: str, request_id: str
) -> pb.ModelInferResponse:
    """The ModelInferResponse for wire-ready outputs (see dtypes.wire_array),
    each as raw_output_contents in the order given."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    raw = response.raw_output_contents
    for name, array in outputs.items():
        datatype = v2_datatype(array.dtype)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        raw.append(serialize_bytes(array) if datatype == BYTES else array.tobytes())
    return response
