"""Inference counters of one worker (Elasticsearch's per-node deployment
stats, plus the durations KServe V2 ModelStatistics reports).

Model threads record successes and failures; the asyncio thread records
rejections, timeouts, cancellations and accesses. Every method takes one
`threading.Lock`, held only for a few additions; no other lock is ever taken
while it is held (the queue may call in here under its own lock: lock order
is queue -> stats). Throughput counts successful inferences in a ring of 60
one-second buckets; the peak is the largest 60-second total ever seen.
`clock` is injectable (wall seconds) so tests can drive time.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

_WINDOW_S = 60


@dataclasses.dataclass(frozen=True)
class Duration:
    """A count of events and their total duration in nanoseconds."""

    count: int = 0
    ns: int = 0


@dataclasses.dataclass(frozen=True)
class StatsSnapshot:
    """A consistent copy of the counters (taken under the lock)."""

    inference_count: int
    error_count: int
    rejected_execution_count: int
    timeout_count: int
    cancelled_count: int
    average_inference_time_ms: float
    throughput_last_minute: int
    peak_throughput_per_minute: int
    number_of_pending_requests: int
    start_time: float  # unix seconds
    last_access: float | None  # unix seconds; None before the first call
    last_inference: float | None  # unix seconds of the last completed inference
    success: Duration  # whole call, admission to result
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class _Sum:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(0, ns)

    def frozen(self) -> Duration:
        return Duration(count=self.count, ns=self.ns)


class Stats:
    """Thread-safe counters; see the module docstring."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._start_time = clock()
        self._last_access: float | None = None
        self._last_inference: float | None = None
        self._inference_count = 0
        self._error_count = 0
        self._rejected = 0
        self._timeouts = 0
        self._cancelled = 0
        self._success, self._fail, self._queue = _Sum(), _Sum(), _Sum()
        self._input, self._infer, self._output = _Sum(), _Sum(), _Sum()
        self._bucket_second = [-1] * _WINDOW_S  # which unix second each bucket holds
        self._bucket_count = [0] * _WINDOW_S
        self._peak = 0

    def record_access(self) -> None:
        """A ModelInfer call reached this worker."""
        now = self._clock()
        with self._lock:
            self._last_access = now

    def record_success(self, *, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int, total_ns: int) -> None:
        """One inference completed and its outputs are ready."""
        now = self._clock()
        second = int(now)
        with self._lock:
            self._inference_count += 1
            self._last_inference = now
            self._success.add(total_ns)
            self._queue.add(queue_ns)
            self._input.add(input_ns)
            self._infer.add(infer_ns)
            self._output.add(output_ns)
            slot = second % _WINDOW_S
            if self._bucket_second[slot] != second:
                self._bucket_second[slot] = second
                self._bucket_count[slot] = 0
            self._bucket_count[slot] += 1
            self._peak = max(self._peak, self._last_minute(second))

    def record_failure(self, *, total_ns: int, model_error: bool) -> None:
        """A call failed after admission; `model_error`: the model raised."""
        with self._lock:
            self._fail.add(total_ns)
            if model_error:
                self._error_count += 1

    def record_rejected(self) -> None:
        """A call was refused because the queue was full."""
        with self._lock:
            self._rejected += 1

    def record_timeout(self) -> None:
        """A call's deadline passed while it was queued; it never ran."""
        with self._lock:
            self._timeouts += 1

    def record_cancelled(self) -> None:
        """A queued call was cancelled by its client; it never ran."""
        with self._lock:
            self._cancelled += 1

    def average_inference_ms(self) -> float:
        """Mean model execution time so far (0.0 before the first)."""
        with self._lock:
            return self._average_ms()

    def snapshot(self, *, pending: int) -> StatsSnapshot:
        """All counters at once; `pending` = queued + running calls now."""
        second = int(self._clock())
        with self._lock:
            return StatsSnapshot(
                inference_count=self._inference_count,
                error_count=self._error_count,
                rejected_execution_count=self._rejected,
                timeout_count=self._timeouts,
                cancelled_count=self._cancelled,
                average_inference_time_ms=self._average_ms(),
                throughput_last_minute=self._last_minute(second),
                peak_throughput_per_minute=self._peak,
                number_of_pending_requests=pending,
                start_time=self._start_time,
                last_access=self._last_access,
                last_inference=self._last_inference,
                success=self._success.frozen(),
                fail=self._fail.frozen(),
                queue=self._queue.frozen(),
                compute_input=self._input.frozen(),
                compute_infer=self._infer.frozen(),
                compute_output=self._output.frozen(),
            )

    # ---- under the lock -------------------------------------------------
    def _average_ms(self) -> float:
        return self._infer.ns / self._infer.count / 1e6 if self._infer.count else 0.0

    def _last_minute(self, second: int) -> int:
        return sum(
            n for s, n in zip(self._bucket_second, self._bucket_count, strict=True) if second - _WINDOW_S < s <= second
        )
