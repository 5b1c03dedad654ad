"""Server-sent events (`text/event-stream`) for the console's live views.

A stream writes one `data:` line of JSON per snapshot the source yields, and
a comment line every HEARTBEAT_S while nothing changes, so proxies keep the
connection and a vanished browser is noticed by the failed write. Sources
are level-triggered snapshots (WatchDeployment's generator, or a list
re-read whenever the change hub's "*" key moves), never deltas.

`Streams` knows every open stream's task so that REST shutdown ends them at
once (aiohttp would otherwise wait out its shutdown timeout for handlers
that never return); the control plane's hub closing ends them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar

from aiohttp import web

from control_plane.reconcile.hub import ANY, ChangeHub
from modelfleet.errors import StatusError

CONTENT_TYPE = "text/event-stream"
HEARTBEAT_S = 15.0
# each event as OpenAPI tools read it: `data` holds one JSON document
EVENT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"data": {"type": "string"}}, "required": ["data"]}
T = TypeVar("T")


async def messages(source: AsyncIterator[T], render: Callable[[T], dict[str, Any]]) -> AsyncGenerator[bytes, None]:
    """Each item of source as one SSE message."""
    async for item in source:
        yield b"data: " + json.dumps(render(item), separators=(",", ":")).encode() + b"\n\n"


async def hub_snapshots(hub: ChangeHub, read: Callable[[], T], *, heartbeat: float = HEARTBEAT_S) -> AsyncIterator[T]:
    """read() at once, then again whenever any key of the hub changes; yields only when it differs."""
    last: T | None = None
    while not hub.closed:
        seen = hub.version(ANY)
        current = read()
        if current != last:
            last = current
            yield current
        await hub.wait_change(ANY, seen, heartbeat)


class Streams:
    """The open event streams; `close()` (REST shutdown) ends every one of them."""

    def __init__(self, *, heartbeat: float = HEARTBEAT_S) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat = heartbeat

    async def serve(self, request: web.Request, source: AsyncGenerator[bytes, None]) -> web.StreamResponse:
        """Answer request with the stream of source's messages until the client leaves or shutdown.

        The first message is read before the headers go out, so a source that
        fails at once (NOT_FOUND, INVALID_ARGUMENT) answers a JSON error instead."""
        first = await anext(source, None)
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        lock = asyncio.Lock()
        beat = asyncio.create_task(self._beat(response, lock))
        try:
            if first is not None:
                await response.write(first)
            async for message in source:
                async with lock:
                    await response.write(message)
        except (ConnectionResetError, StatusError, asyncio.CancelledError):
            pass  # the client went away, or shutdown: the stream simply ends (the client reconnects)
        finally:
            beat.cancel()
            if task is not None:
                self._tasks.discard(task)
            with contextlib.suppress(Exception):
                await source.aclose()
        return response

    async def _beat(self, response: web.StreamResponse, lock: asyncio.Lock) -> None:
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            while True:
                await asyncio.sleep(self._heartbeat)
                async with lock:
                    await response.write(b": keepalive\n\n")

    def close(self) -> None:
        """End every open stream (the handlers return at once)."""
        for task in list(self._tasks):
            task.cancel()

    async def shutdown(self, _: web.Application) -> None:
        """aiohttp's on_shutdown signal: before it waits for open handlers."""
        self.close()
