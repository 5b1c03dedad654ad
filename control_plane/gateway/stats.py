"""Per-deployment counters of what the gateway saw (GetDeploymentStats
shows them beside the workers' own). In memory, event-loop only.
"""

from __future__ import annotations

import collections
import time

from modelfleet.v1 import common_pb2


class GatewayStats:
    """What the gateway saw per deployment since it started (in memory).

    inference_count: calls a worker answered; rejected_execution_count: calls
    refused with RESOURCE_EXHAUSTED (the traffic limit here, or a worker's
    full queue relayed); timeout_count: calls whose deadline passed before an
    answer; cancelled_count: calls their client cancelled; error_count: any
    other failure (no started worker, a worker error).
    """

    _FIELDS = ("inference_count", "rejected_execution_count", "timeout_count", "cancelled_count", "error_count")

    def __init__(self) -> None:
        self._counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._last: dict[str, float] = {}

    def count(self, deployment_id: str, field: str) -> None:
        self._counts[deployment_id][field] += 1
        self._last[deployment_id] = time.time()

    def get(self, deployment_id: str) -> common_pb2.InferenceStats | None:
        counts = self._counts.get(deployment_id)
        if counts is None:
            return None
        out = common_pb2.InferenceStats(**{f: counts[f] for f in self._FIELDS})
        out.last_access.FromNanoseconds(int(self._last[deployment_id] * 1e9))
        return out

    def forget(self, deployment_id: str) -> None:
        self._counts.pop(deployment_id, None)
        self._last.pop(deployment_id, None)


    def deployments(self) -> list[str]:
        return sorted(self._counts)


DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DurationHistogram:
    """Call durations per deployment in cumulative-ready buckets (for /metrics).

    observe() runs on the event loop; a scrape (another thread) reads
    snapshot(), whose list/dict copies are atomic under the GIL.
    """

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS_S) -> None:
        self.buckets = buckets
        self._counts: dict[str, list[int]] = {}  # per bucket (+Inf last), not cumulative
        self._sums: dict[str, float] = {}

    def observe(self, deployment_id: str, seconds: float) -> None:
        counts = self._counts.get(deployment_id)
        if counts is None:
            counts = self._counts[deployment_id] = [0] * (len(self.buckets) + 1)
        i = next((i for i, bound in enumerate(self.buckets) if seconds <= bound), len(self.buckets))
        counts[i] += 1
        self._sums[deployment_id] = self._sums.get(deployment_id, 0.0) + seconds

    def snapshot(self) -> dict[str, tuple[list[tuple[str, int]], float]]:
        """deployment -> ([(le, cumulative count)...] ending with +Inf, sum of seconds)."""
        out: dict[str, tuple[list[tuple[str, int]], float]] = {}
        for deployment_id, counts in list(self._counts.items()):
            counts = list(counts)
            running, cumulative = 0, []
            for bound, n in zip((*(str(b) for b in self.buckets), "+Inf"), counts, strict=True):
                running += n
                cumulative.append((bound, running))
            out[deployment_id] = (cumulative, self._sums.get(deployment_id, 0.0))
        return out
