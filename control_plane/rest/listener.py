"""Serving an aiohttp application on HOST:PORT: the control plane's and the standalone gateway's REST port.

Free of the access table (control_plane.auth), so the standalone gateway,
which may not import it, binds its REST port with the same code."""

from __future__ import annotations

from importlib import metadata

from aiohttp import web


def product_version() -> str:
    """The installed modelfleet version ("0.0.0" when run from a source tree without metadata)."""
    try:
        return metadata.version("modelfleet")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class RestServer:
    """Serves the REST application on HOST:PORT (port 0 = any free port)."""

    def __init__(self, app: web.Application, *, reuse_port: bool = False) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._reuse_port = reuse_port or None  # SO_REUSEPORT: the standalone gateway's processes share the port

    async def start(self, listen: str) -> str:
        """Bind and serve; returns HOST:PORT actually bound."""
        host, _, port_text = listen.rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            raise SystemExit(f"error: --http-listen {listen!r}: expected HOST:PORT") from None
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=self._reuse_port)
        try:
            await site.start()
        except OSError as exc:
            raise SystemExit(f"error: cannot listen on {listen}: {exc} (is another process using the port?)") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        return f"{host}:{bound}"

    async def stop(self) -> None:
        """Stop accepting and close open connections."""
        await self._runner.cleanup()
