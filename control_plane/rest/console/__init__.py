"""The web console: static files (HTML, ES modules, CSS) under /console/, and / redirecting there.

The console is a client of the REST API and nothing else: no data is
templated into a page, the browser fetches /api/v1 with the API key the
user signed in with (kept in sessionStorage). The files ship as package
data (pyproject's [tool.setuptools.package-data]), so `pip install` serves
them with no build step.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).with_name("static")
PATH = "/console/"
# the pages fetch only this origin; nothing inline, nothing third-party
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def add_console(app: web.Application) -> None:
    """Serve the console at /console/ (index.html for the directory) and redirect / to it."""

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers=_HEADERS)

    async def root(_: web.Request) -> web.Response:
        raise web.HTTPFound(PATH)

    async def bare(_: web.Request) -> web.Response:
        raise web.HTTPFound(PATH)

    app.router.add_get("/", root)
    app.router.add_get("/console", bare)
    app.router.add_get(PATH, index)
    app.router.add_static(PATH, STATIC, append_version=False)

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith(PATH):
            for name, value in _HEADERS.items():
                response.headers.setdefault(name, value)

    app.on_response_prepare.append(headers)
