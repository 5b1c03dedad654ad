"""KServe V2 REST inference: `POST /v2/models/{name}[/versions/{v}]/infer`.

The handler reads the body (up to the message limit), lets the codec
(control_plane.rest.v2_tensors) turn it into the `ModelInferRequest` it
means, and hands the serialized request to `Gateway.infer`, the one path
gRPC ModelInfer takes too: the same validation, traffic limit, routing,
retry-once-elsewhere and counters. The worker's reply is turned back into
the JSON (and binary) answer.

The caller's deadline is Triton's `timeout` request parameter
(microseconds, as tritonclient.http sends it) or a `Timeout` header in
seconds; the earlier of the two wins. It travels to the worker as the
call's timeout, and a call still unanswered at the deadline ends 504.
A worker's status is relayed through the one error mapping
(control_plane.rest.errors), 429 with `Retry-After` included.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

from control_plane.errors import DeadlineExceeded, InvalidArgument
from control_plane.gateway.service import Gateway, Relayed
from control_plane.rest import v2_tensors
from control_plane.rest.errors import status_response
from control_plane.rest.openapi import ERROR_SCHEMA
from control_plane.rest.routes import Route
from modelfleet.inference import grpc_service_pb2 as pb

DEFAULT_MAX_BODY_BYTES = 64 << 20  # the gRPC servers' default --max-message-bytes
_ACCESS = "/inference.GRPCInferenceService/ModelInfer"
_PARAMETERS: dict[str, Any] = {"type": "object", "additionalProperties": {"oneOf": [
    {"type": "boolean"}, {"type": "number"}, {"type": "string"}]}}  # fmt: skip
_TENSOR: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                   "datatype": {"type": "string"}, "parameters": _PARAMETERS, "data": {}},
    "required": ["name", "shape", "datatype"],
}
REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "parameters": _PARAMETERS, "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"},
                                                                                 "parameters": _PARAMETERS},
                                               "required": ["name"]}},
    },
    "required": ["inputs"],
}  # fmt: skip
RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                   "parameters": _PARAMETERS, "outputs": {"type": "array", "items": _TENSOR}},
    "required": ["model_name", "outputs"],
}
_ERRORS = {code: {"schema": ERROR_SCHEMA} for code in ("400", "401", "403", "404", "413", "429", "503", "504")}


def infer_routes(gateway: Gateway, prefix: str, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> list[Route]:
    """The infer route under `prefix` (/v2/models/{name} or …/versions/{version})."""

    async def infer(request: web.Request) -> web.StreamResponse:
        return await infer_call(gateway, request, max_body_bytes=max_body_bytes)

    return [Route("POST", f"{prefix}/infer", infer, "Inference (JSON or Triton's binary tensor data extension)",
                  {"200": {"schema": RESPONSE_SCHEMA}, **_ERRORS}, _ACCESS, request=REQUEST_SCHEMA)]


async def infer_call(gateway: Gateway, request: web.Request, *, max_body_bytes: int) -> web.StreamResponse:
    """One infer call: HTTP body -> Gateway.infer -> HTTP answer (domain errors are the guard's to map)."""
    body = await _read_body(request, max_body_bytes)
    if body is None:
        return web.json_response({"error": f"the request body is over the limit of {max_body_bytes} bytes"}, status=413)
    decoded = v2_tensors.decode_request(
        body, header_length=_header_length(request), model_name=request.match_info["name"],
        model_version=request.match_info.get("version", ""),
    )  # fmt: skip
    timeout_s = _earliest(decoded.timeout_s, _timeout_header(request))
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    time_remaining: Callable[[], float | None] = lambda: None if deadline is None else deadline - loop.time()  # noqa: E731
    try:
        async with asyncio.timeout_at(deadline):
            reply = await gateway.infer(decoded.request.SerializeToString(), time_remaining)
    except TimeoutError:
        raise DeadlineExceeded(f"deadline of {timeout_s:g} s exceeded before the model answered") from None
    except Relayed as relayed:
        return status_response(relayed.code.name, relayed.details, dict(relayed.trailers))
    encoded = v2_tensors.encode_response(
        pb.ModelInferResponse.FromString(reply), binary_outputs=decoded.binary_outputs, binary_default=decoded.binary_default,
    )  # fmt: skip
    if encoded.header_length is None:
        return web.Response(body=encoded.body, content_type="application/json")
    return web.Response(body=encoded.body, content_type="application/octet-stream",
                        headers={v2_tensors.HEADER_LENGTH: str(encoded.header_length)})


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None once it is over limit (refused before reading when Content-Length says so)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks, total = [], 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _header_length(request: web.Request) -> int | None:
    text = request.headers.get(v2_tensors.HEADER_LENGTH)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{v2_tensors.HEADER_LENGTH} must be an integer, got {text!r}") from None


def _timeout_header(request: web.Request) -> float | None:
    text = request.headers.get("Timeout")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidArgument(f"the Timeout header must be a positive number of seconds, got {text!r}")
    return seconds


def _earliest(*timeouts: float | None) -> float | None:
    given = [t for t in timeouts if t is not None]
    return min(given) if given else None
