"""The health watch of one STARTED worker: periodic health checks and the
drain signal, as futures its WorkerHandle waits on beside the exit and the stop.

Two things are watched over the worker's channel: a ``Health.Watch`` stream
that tells when the worker turns NOT_SERVING on its own (someone sent it
SIGTERM, so it drains), and a ``Check`` every ``health_interval`` seconds.
``health_failures`` failed checks in a row make the worker a crash. Once it
drains, checks stop (a draining worker is NOT_SERVING by design).

Concurrency model: used only from the handle's lifecycle task on the agent's
asyncio loop; it starts at most one check at a time and never blocks.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Any

import grpc

from node_agent.procs import check_health, wait_not_serving

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    """What the watch concluded from the futures that completed."""

    NONE = "none"  # nothing to act on; keep waiting
    DRAINING = "draining"  # the worker began draining on its own
    UNHEALTHY = "unhealthy"  # health_failures failed checks in a row


class HealthWatch:
    """Health checks and the drain watch of one serving worker (see the module docstring)."""

    def __init__(
        self, channel: grpc.aio.Channel, *, interval: float, timeout: float, failures: int, allocation_id: str
    ) -> None:
        self._channel = channel
        self._interval = interval
        self._timeout = timeout
        self._max_failures = failures
        self._allocation_id = allocation_id
        self._drain: asyncio.Future[bool] | None = asyncio.ensure_future(wait_not_serving(channel))
        self._check: asyncio.Future[str | None] | None = None
        self._next_check = time.monotonic() + interval
        self.draining = False
        self.failures = 0
        self.last_error: str | None = None

    def waiters(self) -> set[asyncio.Future[Any]]:
        """The futures in flight that the handle must wait on too."""
        return {t for t in (self._check, self._drain) if t is not None}

    def timeout(self) -> float | None:
        """How long the handle may wait before the next check is due (None: until a future completes)."""
        if self._check is not None or self.draining:
            return None
        return max(0.0, self._next_check - time.monotonic())

    def step(self, done: set[asyncio.Future[Any]], *, serving: bool) -> Verdict:
        """Take in the completed futures (done) and start the next check when due.

        serving: whether the handle is STARTED (a drain is reported only then)."""
        if self._drain is not None and self._drain in done:
            drain, self._drain = self._drain, None
            seen = not drain.cancelled() and drain.exception() is None and drain.result()
            if seen and serving:
                self.draining = True
                self._cancel_check()
                return Verdict.DRAINING
            return Verdict.NONE
        if self.draining:
            return Verdict.NONE
        if self._check is None:
            self._check = asyncio.ensure_future(check_health(self._channel, timeout=self._timeout))
            return Verdict.NONE
        if self._check not in done:
            return Verdict.NONE
        error, self._check = self._check.result(), None
        self._next_check = time.monotonic() + self._interval
        self.failures = 0 if error is None else self.failures + 1
        self.last_error = error
        if error is not None:
            log.warning("allocation %s: health check %d failed: %s", self._allocation_id, self.failures, error)
        return Verdict.UNHEALTHY if self.failures >= self._max_failures else Verdict.NONE

    def close(self) -> None:
        """Cancel what is in flight (the channel is the handle's to close)."""
        self._cancel_check()
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None

    def _cancel_check(self) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None
