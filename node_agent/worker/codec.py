"""KServe V2 tensors <-> numpy: strict request decoding, response encoding.

Decoding checks everything before a call is queued, so a bad request never
reaches the model: the rules are modelfleet.wire.v2's, the gateway's too
(one walk over the request; its module docstring lists them). Every failure
raises `InvalidArgument` naming the input with expected and got; what passes
is turned into numpy arrays with nothing left to check.

The fast path is raw_input_contents: `np.frombuffer` over the request bytes
(no copy, read-only) reshaped to the request shape. Outputs always go back as
raw_output_contents. Pure functions, no shared state: safe on any thread.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Sequence

import numpy as np

from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.wire import v2
from node_agent.runtime.base import TensorSpec
from node_agent.runtime.dtypes import BYTES, numpy_dtype, v2_datatype
from node_agent.worker.errors import InvalidArgument

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


def deserialize_bytes(name: str, buffer: bytes, count: int) -> np.ndarray:
    """Split a BYTES raw buffer (4-byte little-endian length + data, repeated)
    into a 1-D object array of `count` bytes elements.

    Raises:
        InvalidArgument: a truncated prefix, an element running past the end,
            or a different number of elements than `count`.
    """
    return _objects(v2.split_bytes(name, buffer, count, error=InvalidArgument))


def _objects(items: Sequence[bytes]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
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


def _array(tensor: v2.CheckedInput) -> np.ndarray:
    """The numpy array of an input the rules passed (no check left to make)."""
    if tensor.elements is not None:
        return _objects(tensor.elements).reshape(tensor.shape)
    dtype = numpy_dtype(tensor.datatype)
    if tensor.raw is not None:
        return np.frombuffer(tensor.raw, dtype=dtype).reshape(tensor.shape)
    if dtype.kind in "iu" and dtype.itemsize < 4:  # 32-bit on the wire, range already checked
        return np.asarray(tensor.values, dtype=np.int64).astype(dtype).reshape(tensor.shape)
    return np.asarray(tensor.values, dtype=dtype).reshape(tensor.shape)


class RequestDecoder:
    """`decode_infer_request` for one model, with the rules' lookups built once
    (the worker's servicer keeps one)."""

    def __init__(self, *, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self._rules = v2.RequestRules(inputs=inputs, outputs=outputs, error=InvalidArgument)

    def decode(self, request: pb.ModelInferRequest) -> InferRequest:
        """See `decode_infer_request`."""
        started = time.perf_counter_ns()
        checked = self._rules.walk(request)
        decoded = {tensor.name: _array(tensor) for tensor in checked.inputs}
        return InferRequest(id=request.id, inputs=decoded, outputs=checked.outputs, decode_ns=time.perf_counter_ns() - started)


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
