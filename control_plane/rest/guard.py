"""REST authentication and authorization from the ONE access table (control_plane/auth/access.py).

Each route names the gRPC method it mirrors; its rule there decides, so REST
and gRPC can never disagree on who may do what."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from control_plane.auth.access import DEFAULT_USER, METHOD_ACCESS, Authenticator, acting_as, check
from control_plane.errors import Unauthenticated
from control_plane.rest.errors import v2_error
from control_plane.rest.routes import Handler, Route
from modelfleet.errors import StatusError


def token_of(header: str) -> str:
    """The API key of `Authorization: Bearer <key>` or `ApiKey <key>` ("" when the header is absent)."""
    if not header:
        return ""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "apikey") or not token.strip():
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <api key>' or 'ApiKey <api key>'")
    return token.strip()


def make_guard(authenticator: Authenticator | None) -> Callable[[Route], Handler]:
    """Wrap each route's handler: check its access rule, then map domain errors to HTTP in one place."""

    def guard(route: Route) -> Handler:
        rule = METHOD_ACCESS.get(route.access)

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                principal = None
                if authenticator is not None and not (rule is not None and rule.public):
                    token = token_of(request.headers.get("Authorization", ""))
                    if not token:
                        raise Unauthenticated(f"{request.path} needs credentials: send 'Authorization: Bearer <api key>'")
                    principal = await authenticator.authenticate(token)
                    check(rule, route.access or request.path, principal)
                # handlers and services see the caller through caller()/current_principal(), as under
                # gRPC's interceptor; with authentication off, the user the X-Modelfleet-User header names
                anon = request.headers.get("X-Modelfleet-User") or DEFAULT_USER
                with acting_as(principal, anon_user=anon):
                    return await route.handler(request)
            except StatusError as exc:
                return (route.on_error or v2_error)(exc)

        return guarded

    return guard
