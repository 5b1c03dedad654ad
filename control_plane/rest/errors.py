"""The one mapping from domain errors (gRPC status code names) to HTTP statuses and V2 error bodies."""

from __future__ import annotations

import math
from collections.abc import Mapping

from aiohttp import web

from modelfleet.errors import StatusError

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "DEADLINE_EXCEEDED": 504,
    "UNAVAILABLE": 503,
    "UNIMPLEMENTED": 501,
}


def http_status(code: str) -> int:
    """The HTTP status for a gRPC status code name (500 only for codes that mean a server fault)."""
    return HTTP_STATUS.get(code, 500)


def v2_error(exc: StatusError) -> web.Response:
    """A KServe V2 error body `{"error": "..."}` with the status the error's code maps to."""
    return status_response(exc.code, str(exc), exc.trailers)


def status_response(code: str, message: str, trailers: Mapping[str, str]) -> web.Response:
    """The V2 error answer for a gRPC status (a domain error's, or a worker's relayed as it is).

    429 carries `Retry-After` in whole seconds: the status's grpc-retry-pushback-ms rounded up, else 1."""
    status = http_status(code)
    headers = {}
    if status == 429:
        try:
            pushback_ms = int(trailers.get("grpc-retry-pushback-ms", "1000"))
        except ValueError:
            pushback_ms = 1000
        headers["Retry-After"] = str(max(1, math.ceil(pushback_ms / 1000)))
    return web.json_response({"error": message}, status=status, headers=headers)
