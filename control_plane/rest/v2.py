"""KServe V2 REST: health and server metadata (inference routes adapt the gateway servicer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from control_plane.rest.openapi import ERROR_SCHEMA
from control_plane.rest.routes import Route

SERVER_NAME = "modelfleet"
SERVER_EXTENSIONS = ["binary_tensor_data"]
_EMPTY: dict[str, Any] = {"type": "object"}
_METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                   "extensions": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "version", "extensions"],
}


def v2_routes(*, version: str, is_ready: Callable[[], bool]) -> list[Route]:
    """The V2 health and metadata routes; readiness follows `is_ready` (false while shutting down)."""

    async def live(_: web.Request) -> web.Response:
        return web.json_response({})

    async def ready(_: web.Request) -> web.Response:
        if is_ready():
            return web.json_response({})
        return web.json_response({"error": "the control plane is not ready"}, status=503)

    async def metadata(_: web.Request) -> web.Response:
        return web.json_response({"name": SERVER_NAME, "version": version, "extensions": SERVER_EXTENSIONS})

    return [
        Route("GET", "/v2/health/live", live, "Server liveness", {"200": {"schema": _EMPTY}}),
        Route("GET", "/v2/health/ready", ready, "Server readiness",
              {"200": {"schema": _EMPTY}, "503": {"schema": ERROR_SCHEMA}}),
        Route("GET", "/v2", metadata, "Server metadata", {"200": {"schema": _METADATA_SCHEMA}}),
    ]
