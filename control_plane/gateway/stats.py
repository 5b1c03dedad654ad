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
