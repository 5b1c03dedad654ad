"""The REST V2 application of the standalone gateway (`modelfleet-gateway --http-listen`).

The same V2 routes as the control plane's (control_plane.rest.v2, .v2_infer)
over the same `Gateway` object, with the standalone gateway's access rules
instead of the access table's: a route mirrors a gRPC method, the gRPC
gateway's public methods stay public, the others take a key checked against
the streamed verifiers (control_plane.gateway.callers: the active keys with
`infer`, as at the workers), and a method outside the gateway's table is
denied. So a key is accepted or refused alike over gRPC and REST at one
gateway. No management routes: the gateway holds no state to manage.

This module may not import the access table (control_plane.auth): the
standalone gateway reads the control plane only through its routes watch.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from control_plane.errors import PermissionDenied, Unauthenticated
from control_plane.gateway.callers import CALLERS, PUBLIC, Verifiers
from control_plane.gateway.service import Gateway
from control_plane.rest.errors import v2_error
from control_plane.rest.openapi import document
from control_plane.rest.routes import Handler, Route, register
from control_plane.rest.v2 import v2_routes
from modelfleet.errors import StatusError


def bearer_of(header: str) -> str:
    """The key of `Authorization: Bearer <key>` ("" when the header is absent), as the gRPC gateway reads it."""
    scheme, _, token = header.strip().partition(" ")
    if header and (scheme.lower() != "bearer" or not token.strip()):
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <api key>'")
    return token.strip()


def make_gateway_guard(verifiers: Verifiers, *, require: Callable[[], bool]) -> Callable[[Route], Handler]:
    """Wrap each route's handler in the gateway's access check, then map domain errors to HTTP."""

    def guard(route: Route) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                if route.access not in PUBLIC:
                    if route.access not in CALLERS:
                        raise PermissionDenied(f"{request.path} is not in the gateway's access table; denied")
                    if require():
                        await verifiers.check(bearer_of(request.headers.get("Authorization", "")), method=request.path)
                return await route.handler(request)
            except StatusError as exc:
                return v2_error(exc)

        return guarded

    return guard


def build_gateway_app(*, gateway: Gateway, verifiers: Verifiers, require: Callable[[], bool], is_ready: Callable[[], bool],
                      version: str, max_body_bytes: int) -> web.Application:
    """The gateway's aiohttp application: every V2 route plus /openapi.json generated from them."""
    routes = v2_routes(gateway=gateway, is_ready=is_ready, max_body_bytes=max_body_bytes)
    spec = document(routes, version=version)

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(spec)

    app = web.Application()
    register(app, routes, guard=make_gateway_guard(verifiers, require=require))
    app.router.add_get("/openapi.json", openapi)
    return app
