"""Inference counters of one worker (Elasticsearch's per-node deployment
stats, plus the durations KServe V2 ModelStatistics reports).

Model threads record successes and failures; the asyncio thread records
rejections, timeouts, cancellations and accesses. Every method takes one
`threading.Lock`, held only for a few additions; no other lock is ever taken
while it is held (the queue may call in here under its own lock: lock order
is queue -> stats). Throughput counts successful inferences in a ring of 60
one-second buckets; the peak is the largest 60-second total ever seen.
`clock` is injectable (wall seconds) so tests can drive time.

For Prometheus (node_agent.worker.metrics) it also keeps cumulative
histograms of queue time and compute time per request and of the batch size
per model run, and the count of ModelInfer calls by final gRPC status; the
exporter reads them at scrape time (`histograms()`, `status_counts()`), so
serving a call costs a few additions under the lock and nothing more.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

_WINDOW_S = 60
# Upper bounds (seconds) of the latency buckets: from 50 us (a small MLP) to 10 s.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclasses.dataclass(frozen=True)
class HistogramSnapshot:
    """Cumulative bucket counts (one per bound, then +Inf), the sum and the count."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    sum: float
    count: int


class _Histogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def frozen(self) -> HistogramSnapshot:
        running, cumulative = 0, []
        for n in self.counts:
            running += n
            cumulative.append(running)
        return HistogramSnapshot(self.bounds, tuple(cumulative), self.total, self.count)


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
    inferences: int = 0  # Triton's inference_count: rows served when batching (a call of N rows is N), else calls


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
        self._inferences = 0
        self._error_count = 0
        self._rejected = 0
        self._timeouts = 0
        self._cancelled = 0
        self._success, self._fail, self._queue = _Sum(), _Sum(), _Sum()
        self._input, self._infer, self._output = _Sum(), _Sum(), _Sum()
        self._queue_hist = _Histogram(LATENCY_BUCKETS_S)
        self._compute_hist = _Histogram(LATENCY_BUCKETS_S)
        self._batch_hist = _Histogram(BATCH_BUCKETS)
        self._status: dict[str, int] = {}
        self._batch_sizes: dict[int, int] = {}
        self._bucket_second = [-1] * _WINDOW_S  # which unix second each bucket holds
        self._bucket_count = [0] * _WINDOW_S
        self._peak = 0

    def record_access(self) -> None:
        """A ModelInfer call reached this worker."""
        now = self._clock()
        with self._lock:
            self._last_access = now

    def record_success(
        self, *, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int, total_ns: int, rows: int = 1
    ) -> None:
        """One inference completed and its outputs are ready; `rows`: the inferences it held (Triton's count)."""
        now = self._clock()
        second = int(now)
        with self._lock:
            self._inference_count += 1
            self._inferences += rows
            self._last_inference = now
            self._success.add(total_ns)
            self._queue.add(queue_ns)
            self._input.add(input_ns)
            self._infer.add(infer_ns)
            self._output.add(output_ns)
            self._queue_hist.observe(max(0, queue_ns) / 1e9)
            self._compute_hist.observe(max(0, infer_ns) / 1e9)
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

    def record_batch(self, size: int, *, rows: int = 0) -> None:
        """The model ran once for `size` calls (1 without batching) holding `rows` rows (0: one per call)."""
        rows = rows or size
        with self._lock:
            self._batch_hist.observe(size)
            self._batch_sizes[rows] = self._batch_sizes.get(rows, 0) + 1

    def batch_sizes(self) -> dict[int, int]:
        """Model runs by the batch size they executed (rows with batching, else 1): Triton's batch_stats."""
        with self._lock:
            return dict(self._batch_sizes)

    def record_status(self, code: str) -> None:
        """A ModelInfer call ended with gRPC status `code` (e.g. "OK")."""
        with self._lock:
            self._status[code] = self._status.get(code, 0) + 1

    def status_counts(self) -> dict[str, int]:
        """ModelInfer calls by final status name."""
        with self._lock:
            return dict(self._status)

    def histograms(self) -> dict[str, HistogramSnapshot]:
        """{"queue", "compute"} seconds per call and "batch" size per model run."""
        with self._lock:
            return {
                "queue": self._queue_hist.frozen(),
                "compute": self._compute_hist.frozen(),
                "batch": self._batch_hist.frozen(),
            }

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
                inferences=self._inferences,
            )

    # ---- under the lock -------------------------------------------------
    def _average_ms(self) -> float:
        return self._infer.ns / self._infer.count / 1e6 if self._infer.count else 0.0

    def _last_minute(self, second: int) -> int:
        return sum(
            n for s, n in zip(self._bucket_second, self._bucket_count, strict=True) if second - _WINDOW_S < s <= second
        )
