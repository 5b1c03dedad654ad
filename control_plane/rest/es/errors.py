"""The one mapping from domain errors to Elasticsearch error bodies.

`{"error": {"root_cause": [{"type", "reason"}], "type", "reason"}, "status": N}`
with Elasticsearch's exception type for each status. A start whose
`wait_for` is not reached within `timeout` answers 408
`elasticsearch_timeout_exception`, as Elasticsearch does (the deployment
keeps starting)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from control_plane.rest.errors import http_status
from modelfleet.errors import StatusError

# gRPC status code name -> (HTTP status, Elasticsearch exception type); others by control_plane.rest.errors
ES_ERRORS: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": (400, "illegal_argument_exception"),
    "OUT_OF_RANGE": (400, "illegal_argument_exception"),
    "FAILED_PRECONDITION": (409, "status_exception"),
    "UNAUTHENTICATED": (401, "security_exception"),
    "PERMISSION_DENIED": (403, "security_exception"),
    "NOT_FOUND": (404, "resource_not_found_exception"),
    "ALREADY_EXISTS": (409, "status_exception"),
    "RESOURCE_EXHAUSTED": (429, "status_exception"),
    "DEADLINE_EXCEEDED": (408, "elasticsearch_timeout_exception"),
    "UNAVAILABLE": (503, "status_exception"),
}


def es_status(code: str) -> tuple[int, str]:
    """(HTTP status, exception type) for a gRPC status code name."""
    return ES_ERRORS.get(code, (http_status(code), "exception"))


def es_body(status: int, kind: str, reason: str) -> dict[str, Any]:
    """Elasticsearch's error body."""
    cause = {"type": kind, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


def es_error(exc: StatusError) -> web.Response:
    """The error as Elasticsearch answers it (401 with `WWW-Authenticate`, as Elasticsearch sends)."""
    status, kind = es_status(exc.code)
    headers = {"WWW-Authenticate": 'ApiKey, Bearer realm="modelfleet"'} if status == 401 else None
    retry = exc.trailers.get("grpc-retry-pushback-ms")
    if status == 429 and retry:
        headers = {"Retry-After": str(max(1, -(-int(retry) // 1000)))}
    return web.json_response(es_body(status, kind, str(exc)), status=status, headers=headers)
