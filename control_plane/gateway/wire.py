"""The wire format the gateway reads and writes without decoding tensors:
the service name, the raw-bytes codec, `scan_model_name` (fields 1 and 2 of
a serialized ModelInferRequest), the stream reply framing and
`never_accepted` (which worker errors prove a call never ran, so a retry
elsewhere is safe) and `transport_failure` (which mean no answer at all). Pure functions, no state.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from control_plane import errors
from modelfleet.inference import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
IDENTITY: Callable[[bytes], bytes] = lambda b: b  # noqa: E731


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise errors.InvalidArgument("malformed ModelInferRequest: bad varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def scan_model_name(buf: bytes) -> tuple[str, str]:
    """(model_name, model_version) from a serialized ModelInferRequest, without
    decoding (or copying) the tensors."""
    name = version = ""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise errors.InvalidArgument("malformed ModelInferRequest: truncated field")
            if field in (1, 2):
                try:
                    text = buf[i : i + length].decode()
                except UnicodeDecodeError as exc:
                    raise errors.InvalidArgument("malformed ModelInferRequest: model_name is not UTF-8") from exc
                if field == 1:
                    name = text
                else:
                    version = text
            i += length
        else:
            raise errors.InvalidArgument(f"malformed ModelInferRequest: wire type {wire}")
    return name, version


# UNAVAILABLE details that prove the worker never ran the call.
_NOT_ACCEPTED_PREFIXES = ("worker is draining", "worker is not serving")
_NOT_CONNECTED = "failed to connect to all addresses"
_NO_ANSWER_IN_TIME = "Deadline Exceeded"  # the details gRPC gives a call its timeout ended


def never_accepted(code: grpc.StatusCode, details: str) -> bool:
    """True only when the call certainly never ran, so a retry elsewhere is safe."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return False
    return details.startswith(_NOT_ACCEPTED_PREFIXES) or _NOT_CONNECTED in details


def transport_failure(code: grpc.StatusCode, details: str) -> bool:
    """True when the worker gave no answer of its own: no connection, a broken one, or the
    deadline passed (what outlier ejection counts; a draining worker's refusal is an answer)."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return details == _NO_ANSWER_IN_TIME  # gRPC's own timer, not the worker's status
    return code == grpc.StatusCode.UNAVAILABLE and not details.startswith(_NOT_ACCEPTED_PREFIXES)


STREAM_REPLY_TAG = b"\x12"  # ModelStreamInferResponse.infer_response: field 2, length-delimited


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def stream_error(request: bytes, message: str) -> bytes:
    """A ModelStreamInferResponse refusing `request`, naming it by model and id when they can be read."""
    named = pb.ModelInferResponse()
    try:
        parsed = pb.ModelInferRequest.FromString(request)
        named.model_name, named.model_version, named.id = parsed.model_name, parsed.model_version, parsed.id
    except Exception:  # noqa: BLE001 - a malformed request is answered without its names
        pass
    return pb.ModelStreamInferResponse(error_message=message, infer_response=named).SerializeToString()
