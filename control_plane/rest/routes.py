"""The one REST route table: it drives both aiohttp registration and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from modelfleet.errors import StatusError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One HTTP operation: method, path, handler and what the OpenAPI document says of it."""

    method: str
    path: str
    handler: Handler
    summary: str
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the gRPC method whose row of the access table (control_plane/auth/access.py) guards this route
    access: str = ""
    # how a domain error is answered (None: the V2 body, control_plane.rest.errors.v2_error)
    on_error: Callable[[StatusError], web.StreamResponse] | None = None
    request: dict[str, Any] | None = None  # the JSON request body's schema, if the route takes one


def register(app: web.Application, routes: list[Route], *, guard: Callable[[Route], Handler]) -> None:
    """Add every route of the table to the aiohttp application, each behind `guard(route)`."""
    for route in routes:
        app.router.add_route(route.method, route.path, guard(route))
