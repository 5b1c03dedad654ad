"""The autoscaler's loop: samples the load of every autoscaled variant and
records the allocation count it wants.

`step()` runs every `AUTOSCALE_INTERVAL_S` beside the reconcile tick (the
control plane's main loop). For each running deployment with an autoscaled
variant it reads what the control plane already has: the allocation records
and the workers' stats from the agents' heartbeats (control_plane.fleet,
`number_of_pending_requests` = queued + running calls, and the cumulative
`rejected_execution_count` / `inference_count`, whose increase since the
heartbeat before is this sample's rejected / answered calls). The pure
decider (control_plane.planning.autoscale) turns that into a wanted count;
a change is written to DeploymentRecord.autoscaled together with an
EVENT_KIND_SCALE event carrying the reason (durable before anything acts on
it), then a scoped reconcile tick places or stops allocations
make-before-break like any fixed-instance change. A scaled-down
allocation's route becomes STOPPING, so gateways stop sending to it, and the
agent's SIGTERM lets its worker finish the calls it holds before it exits.

What the decider remembers (since when the load has been high, low or idle)
lives in memory only: after a control-plane restart each variant keeps the
count it had (the record) and waits a whole delay again before it changes.
Event-loop only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from control_plane.fleet.liveness import Fleet
from control_plane.fleet.nodeviews import NodeViews
from control_plane.planning import autoscale, scheduler
from control_plane.reconcile.events import EventLog
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, deployments_pb2

log = logging.getLogger(__name__)

AUTOSCALE_INTERVAL_S = 1.0
RUNNING = records_pb2.DESIRED_STATE_RUNNING
_STARTED = common_pb2.ROUTING_STATE_STARTED


@dataclass
class _Counters:
    """One allocation's last heartbeat stats and the increase they showed over the one before."""

    stats: common_pb2.InferenceStats
    rejected: int = 0
    answered: int = 0


class Autoscaler:
    """Samples and decides (see the module docstring).

    Args:
        reconcile: runs a scoped reconcile tick for the deployments whose wanted counts changed.
        held: deployment_id -> calls gateways hold for it (0 when none do).
    """

    def __init__(
        self,
        *,
        store: Store,
        fleet: Fleet,
        views: NodeViews,
        events: EventLog,
        reconcile: Callable[[Iterable[str]], None],
        now_ts: Callable[[], timestamp_pb2.Timestamp],
        clock: Callable[[], float] = time.monotonic,
        held: Callable[[str], int] | None = None,
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._views = views
        self._events = events
        self._reconcile = reconcile
        self._now_ts = now_ts
        self._clock = clock
        self._held = held
        self._states: dict[tuple[str, str], autoscale.State] = {}
        self._counters: dict[str, _Counters] = {}  # allocation_id -> its last stats
        self.decisions = 0  # changes made since the start (for /metrics)

    def step(self) -> None:
        """One sample of every autoscaled variant; changed deployments are reconciled."""
        now = self._clock()
        changed: list[str] = []
        seen: set[tuple[str, str]] = set()
        alive: set[str] = set()
        for rec in self._store.list_deployments():
            if rec.desired != RUNNING or not any(v.HasField("autoscaling") for v in rec.spec.variants):
                continue
            allocs = self._store.list_allocations(deployment_id=rec.deployment_id)
            alive.update(a.allocation_id for a in allocs)
            if self._step_deployment(rec, allocs, now=now, seen=seen):
                changed.append(rec.deployment_id)
        for key in [k for k in self._states if k not in seen]:
            del self._states[key]
        for allocation_id in [a for a in self._counters if a not in alive]:
            del self._counters[allocation_id]
        if changed:
            self._reconcile(changed)

    def _step_deployment(
        self,
        rec: records_pb2.DeploymentRecord,
        allocs: list[records_pb2.AllocationRecord],
        *,
        now: float,
        seen: set[tuple[str, str]],
    ) -> bool:
        """Decide every autoscaled variant of rec; True if a wanted count changed (written with its event)."""
        changes: list[tuple[str, int, autoscale.Decision]] = []
        for variant in rec.spec.variants:
            wanted = autoscale.wanted(rec, variant)
            if wanted is None:
                continue
            key = (rec.deployment_id, variant.name)
            seen.add(key)
            mine = [a for a in allocs if a.variant == variant.name and a.desired == RUNNING]
            decision = autoscale.decide(
                autoscale.Settings.from_proto(variant.autoscaling),
                wanted=wanted,
                sample=self._sample(rec.deployment_id, mine),
                now=now,
                state=self._states.get(key, autoscale.State()),
                capacity=self._capacity(variant, mine),
            )
            self._states[key] = decision.state
            if decision.wanted != wanted:
                changes.append((variant.name, wanted, decision))
        if not changes:
            return False
        with self._store.transaction():
            fresh = self._store.get_deployment(rec.deployment_id)
            if fresh is None or fresh.revision != rec.revision:
                return False  # changed meanwhile: the next step decides on the new spec
            for name, old, decision in changes:
                entry = fresh.autoscaled[name]
                entry.wanted, entry.reason = decision.wanted, decision.reason
                entry.last_change.CopyFrom(self._now_ts())
                self._events.scale(rec.deployment_id, variant=name, old=old, new=decision.wanted, reason=decision.reason)
                log.info("deployment %s variant %s: %s", rec.deployment_id, name, decision.reason)
            self._store.put_deployment(fresh)
        self.decisions += len(changes)
        return True

    def _sample(self, deployment_id: str, mine: list[records_pb2.AllocationRecord]) -> autoscale.Sample:
        in_flight = 0.0
        started = rejected = answered = 0
        for alloc in mine:
            if alloc.routing_state != _STARTED:
                continue
            started += 1
            stats = self._fleet.stats(alloc.node_id, alloc.allocation_id)
            if stats is None:
                continue
            counters = self._counted(alloc.allocation_id, stats)
            in_flight += stats.number_of_pending_requests
            rejected += counters.rejected
            answered += counters.answered
        held = self._held(deployment_id) if self._held is not None else 0
        return autoscale.Sample(in_flight=in_flight, started=started, rejected=rejected, answered=answered, held=held)

    def _counted(self, allocation_id: str, stats: common_pb2.InferenceStats) -> _Counters:
        """The increase over the previous heartbeat's counters; kept until the next heartbeat replaces stats."""
        last = self._counters.get(allocation_id)
        if last is not None and last.stats is stats:
            return last  # no new heartbeat since the last sample
        now = _Counters(stats=stats)
        if last is not None:
            now.rejected = max(0, stats.rejected_execution_count - last.stats.rejected_execution_count)
            now.answered = max(0, stats.inference_count - last.stats.inference_count)
        self._counters[allocation_id] = now
        return now

    def _capacity(self, variant: deployments_pb2.VariantSpec, mine: list[records_pb2.AllocationRecord]) -> int:
        """The allocations the fleet can hold for variant now: its live nodes plus every node with room for one more."""
        model = self._store.get_model(variant.model_id, variant.model_version)
        demand = scheduler.demand_for(variant, model_bytes=model.model_bytes if model else 0)
        placed = scheduler.place(demand, list(self._views.get().values()), current={a.node_id for a in mine})
        return len(placed.targets)
