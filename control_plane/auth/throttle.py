"""Slows down repeated authentication failures, per client and per key id.

A failed call (no key, a malformed, unknown, wrong, revoked or expired key)
is counted against the client's host and, when the token names one, its
key id, in a sliding window. The first `free` failures of a window are
answered at once; each one after that waits longer before its answer
(doubling from `base_delay_s`, at most `max_delay_s`), so guessing keys
costs time without holding any lock or thread. Calls with a good key are
never slowed. Memory is bounded: at most `max_tracked` clients and key ids
are remembered (least recently failing dropped first). Counts by reason feed
/metrics; a WARNING names a client once per window, not once per attempt.
Pure apart from the injected clock.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

REASONS = ("missing", "malformed", "invalid", "revoked", "expired")


@dataclass
class _Window:
    times: collections.deque[float] = field(default_factory=collections.deque)
    warned_at: float = float("-inf")


class FailureThrottle:
    def __init__(
        self,
        *,
        window_s: float = 60.0,
        free: int = 5,
        base_delay_s: float = 0.05,
        max_delay_s: float = 1.0,
        max_tracked: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s, self.free = window_s, free
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self.max_tracked = max_tracked
        self._clock = clock
        self._windows: collections.OrderedDict[str, _Window] = collections.OrderedDict()
        self.failures: collections.Counter[str] = collections.Counter()  # by reason
        self.throttled = 0  # failures answered after a delay

    def failed(self, *, client: str, key_id: str = "", reason: str = "invalid") -> tuple[float, bool]:
        """Count one failure; returns (seconds to wait before answering, whether to log it)."""
        now = self._clock()
        self.failures[reason if reason in REASONS else "invalid"] += 1
        counts = [self._count(f"client:{client}", now)]
        if key_id:
            counts.append(self._count(f"key:{key_id}", now))
        over = max(counts) - self.free
        delay = 0.0 if over <= 0 else min(self.max_delay_s, self.base_delay_s * 2 ** (over - 1))
        if delay:
            self.throttled += 1
        window = self._windows[f"client:{client}"]
        warn = now - window.warned_at >= self.window_s
        if warn:
            window.warned_at = now
        return delay, warn

    def _count(self, name: str, now: float) -> int:
        window = self._windows.pop(name, None) or _Window()
        self._windows[name] = window  # most recent last
        while window.times and window.times[0] <= now - self.window_s:
            window.times.popleft()
        window.times.append(now)
        while len(self._windows) > self.max_tracked:
            self._windows.popitem(last=False)
        return len(window.times)


def reason_of(message: str) -> str:
    """The failure's kind from the Unauthenticated message the key service gives."""
    text = message.lower()
    if "needs credentials" in text:
        return "missing"
    if "malformed" in text:
        return "malformed"
    if "was revoked" in text:
        return "revoked"
    if "expired" in text:
        return "expired"
    return "invalid"


def client_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5123' -> '127.0.0.1' (a client's ports change with every connection)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer
