"""The traffic limit: a token bucket per deployment (calls per second).
Event-loop only; the clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """calls per second with a small burst: a tenth of a second's worth, at least 2.

    At least 2, not 1: with room for one token only, the bucket is full
    between the moment it refills and the next arrival, and that time is
    lost; under steady overload that would admit up to ~1/6 less than the
    rate. With room for two, a refilled token waits for its call."""

    MIN_BURST = 2.0

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(self.MIN_BURST, rate / 10)
        self.tokens = self.burst
        self._clock = clock
        self._last = clock()

    def take(self) -> float:
        """0 if a call may pass now, else the seconds until one may."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1 - 1e-9:  # tolerate float sums such as 3 x (1/3)
            self.tokens = max(0.0, self.tokens - 1)
            return 0.0
        return (1 - self.tokens) / self.rate

