"""Change notification for deployments: `wait_for`, WatchDeployment and the
gateway's routing table all wait here instead of polling.

Each deployment id has a version counter that grows on every change the
reconciler observes. A waiter remembers the version it last saw and sleeps
until it grows, so a burst of changes wakes it once (level-triggered: it
then reads the current state, never a delta). The key "*" changes with
every key.

Waiters are futures kept per key, so a change wakes only the waiters of that
key (and of "*"): with a thousand deployments starting at once, each
notification costs O(its own waiters), never O(all waiters). Unknown keys
cost nothing until someone notifies or waits on them. Event-loop only.
"""

from __future__ import annotations

import asyncio

ANY = "*"


class ChangeHub:
    def __init__(self) -> None:
        self._versions: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def version(self, key: str) -> int:
        return self._versions.get(key, 0)

    def notify(self, key: str) -> None:
        """Mark key changed; its waiters (and those of "*") wake on the next loop iteration."""
        for name in (key, ANY) if key != ANY else (ANY,):
            self._versions[name] = self._versions.get(name, 0) + 1
            waiters = self._waiters.pop(name, None)
            for future in waiters or ():
                if not future.done():
                    future.set_result(None)

    async def wait_change(self, key: str, seen: int, timeout: float | None = None) -> int:
        """Wait until key's version differs from `seen` (or timeout). Returns the version."""
        if self.version(key) == seen:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = self._waiters.setdefault(key, set())
            waiters.add(future)
            try:
                await asyncio.wait((future,), timeout=timeout)
            finally:
                future.cancel()
                current = self._waiters.get(key)
                if current is not None:
                    current.discard(future)
                    if not current:
                        del self._waiters[key]
        return self.version(key)
