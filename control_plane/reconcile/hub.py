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

`close()` (at shutdown) wakes every waiter and makes later waits return at
once; `closed` tells them to give up, so long waits and watch streams end
before the server's grace period instead of being cancelled by it.
"""

from __future__ import annotations

import asyncio

ANY = "*"


class ChangeHub:
    def __init__(self) -> None:
        self._versions: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake every waiter for good: the control plane is shutting down."""
        self._closed = True
        waiters = [f for futures in self._waiters.values() for f in futures]
        self._waiters.clear()
        for future in waiters:
            if not future.done():
                future.set_result(None)

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

    def notify_waiting(self) -> None:
        """Mark every key someone waits on changed: they re-read the store (a standby,
        whose store changes under it, calls this every lease round)."""
        for key in list(self._waiters):
            self.notify(key)

    async def wait_change(self, key: str, seen: int, timeout: float | None = None) -> int:
        """Wait until key's version differs from `seen` (or timeout). Returns the version."""
        if self.version(key) == seen and not self._closed:
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
