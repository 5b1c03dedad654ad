"""The one mapping from domain errors (gRPC status code names) to HTTP statuses and V2 error bodies."""

from __future__ import annotations

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
    return web.json_response({"error": str(exc)}, status=http_status(exc.code))
