"""Change notification for deployments: `wait_for`, WatchDeployment and the
gateway's routing table all wait here instead of polling.

Each deployment id has a version counter that grows on every change the
reconciler observes. A waiter remembers the version it last saw and sleeps
until it grows, so a burst of changes wakes it once (level-triggered: it
then reads the current state, never a delta). Event-loop only.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


class ChangeHub:
    def __init__(self) -> None:
        self._versions: dict[str, int] = defaultdict(int)
        self._cond = asyncio.Condition()
        self._pending: set[str] = set()
        self._scheduled = False

    def version(self, key: str) -> int:
        return self._versions[key]

    def notify(self, key: str) -> None:
        """Mark key changed; waiters wake on the next loop iteration."""
        self._versions[key] += 1
        self._versions["*"] += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop, so nobody can be waiting (unit tests tick synchronously)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(lambda: asyncio.ensure_future(self._wake()))

    async def _wake(self) -> None:
        self._scheduled = False
        async with self._cond:
            self._cond.notify_all()

    async def wait_change(self, key: str, seen: int, timeout: float | None = None) -> int:
        """Wait until key's version differs from `seen` (or timeout). Returns the version."""

        async def _wait() -> None:
            async with self._cond:
                await self._cond.wait_for(lambda: self._versions[key] != seen)

        if self._versions[key] == seen:
            try:
                await asyncio.wait_for(_wait(), timeout)
            except TimeoutError:
                pass
        return self._versions[key]
