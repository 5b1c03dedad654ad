"""Answering a request stream concurrently, in completion order, with a bounded window.

Shared by the worker's and the gateway's ModelStreamInfer: every request
read from the stream is handled in its own task, and each answer is yielded
as soon as it is ready. At most `window` requests are in flight or answered
but not yet taken by the client; beyond that the stream is not read, so a
client that sends without reading is held back by gRPC's flow control
instead of growing the server's memory. When the request stream ends, the
answers of the requests still running are awaited and yielded; if reading
the stream fails (an undecodable message), that error is raised after the
answers already made. Closing the generator (the client went away) cancels
whatever still runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")

DEFAULT_WINDOW = 1024


async def answer_concurrently(
    requests: AsyncIterator[Request],
    handle: Callable[[Request], Awaitable[Answer]],
    *,
    window: int = DEFAULT_WINDOW,
) -> AsyncIterator[Answer]:
    """Yields handle(request) for every request, in completion order.

    `handle` must answer every request itself (errors included); an exception
    escaping it ends the stream with that exception.
    """
    if window < 1:
        raise ValueError("window must be at least 1")
    answers: asyncio.Queue[tuple[bool, object]] = asyncio.Queue()
    room = asyncio.Semaphore(window)
    running: set[asyncio.Task[None]] = set()

    async def one(request: Request) -> None:
        try:
            answers.put_nowait((True, await handle(request)))
        except Exception as exc:  # handle() broke its promise: end the stream with it
            answers.put_nowait((False, exc))

    async def read() -> None:
        try:
            while True:
                await room.acquire()  # a place in the window before the next request is read
                try:
                    request = await anext(requests)
                except StopAsyncIteration:
                    break
                task = asyncio.create_task(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            current = asyncio.current_task()
            try:
                # the answers of what already runs come first, unless the client went away
                while running and not (current is not None and current.cancelling()):
                    await asyncio.wait(set(running))
            finally:
                answers.put_nowait((False, None))  # no more answers

    reader = asyncio.create_task(read())
    try:
        while True:
            ok, item = await answers.get()
            if not ok:
                if item is None:
                    break
                raise item  # type: ignore[misc]
            yield item  # type: ignore[misc]
            room.release()
        await reader  # re-raises what ended the request stream
    finally:
        for task in (reader, *running):
            task.cancel()
