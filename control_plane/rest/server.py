"""The REST server: an aiohttp application on the control plane's asyncio loop.

aiohttp is mature, asyncio-native and runs on the same event loop as the
grpc.aio server, so REST needs no extra thread and calls the same in-process
objects as gRPC."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from control_plane.auth.access import Authenticator
from control_plane.gateway.service import Gateway
from control_plane.rest.api_v1 import Services, api_v1_routes
from control_plane.rest.console import add_console
from control_plane.rest.es.routes import es_routes
from control_plane.rest.guard import make_guard
from control_plane.rest.listener import RestServer, product_version
from control_plane.rest.openapi import document
from control_plane.rest.routes import Route, register
from control_plane.rest.v2 import v2_routes

__all__ = ["RestServer", "build_app", "product_version"]


def build_app(*, gateway: Gateway, authenticator: Authenticator | None, version: str,
              is_ready: Callable[[], bool], services: Services | None = None) -> web.Application:
    """The aiohttp application: every route of the table (each behind the access table's rule)
    plus /openapi.json generated from it; with the control plane's `services`, the
    Elasticsearch-shaped management routes, the console and its /api/v1 too."""
    routes: list[Route] = v2_routes(gateway=gateway, is_ready=is_ready)
    if services is not None:
        routes += es_routes(deployments=services.deployments, registry=services.registry, gateway=gateway)
        routes += api_v1_routes(services)
    spec = document(routes, version=version)

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(spec)

    app = web.Application()
    register(app, routes, guard=make_guard(authenticator))
    app.router.add_get("/openapi.json", openapi)
    if services is not None:
        add_console(app)
        app.on_shutdown.append(services.streams.shutdown)
    return app
