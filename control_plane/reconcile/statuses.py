"""Deployment statuses, derived from the allocation records and written.

`StatusWriter.derive` (called by the reconcile tick for each deployment it
reconciles) summarises every variant's allocations (control_plane.planning.lifecycle),
adds what placement waits for and what a rolling update waits for (the
Reconciler's `placements` and `rollouts`, shared by reference), and `_write`
is the one place a deployment's status changes: it writes the record, records
the status event and notifies the hub. Event-loop only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import NamedTuple

from google.protobuf import timestamp_pb2

from control_plane.planning import lifecycle, reasons, rollout, scheduler
from control_plane.reconcile.events import EventLog
from control_plane.reconcile.hub import ChangeHub
from control_plane.reconcile.records import RS, RUNNING, STOPPED
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, common_pb2, deployments_pb2

log = logging.getLogger(__name__)

Template = Callable[[str, deployments_pb2.VariantSpec], "agent_pb2.AllocationSpec | None"]


class _Summary(NamedTuple):
    """What the variants' allocations say, before it becomes one status."""

    views: list[lifecycle.VariantView]
    waiting: list[str]
    failures: list[str]
    also_serving: int


class StatusWriter:
    """Derives and writes deployment statuses (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        hub: ChangeHub,
        events: EventLog,
        now: Callable[[], timestamp_pb2.Timestamp],
        template: Template,
        placements: dict[tuple[str, str], scheduler.Placement],
        rollouts: dict[str, str],
    ) -> None:
        self._store = store
        self._hub = hub
        self._events = events
        self._now = now
        self._template = template
        self._placements = placements
        self._rollouts = rollouts

    def derive(self, deployment_id: str) -> None:
        """Derive the deployment's status from its records; write it if it changed."""
        rec = self._store.get_deployment(deployment_id)
        if rec is None:
            return
        summary = self._summarize(rec)
        views = summary.views
        ever_served = rec.ever_served or any(v.started for v in views) or summary.also_serving > 0
        waiting_reason = ("waiting for capacity: " + "; ".join(summary.waiting)) if summary.waiting else ""
        rollout_reason = self._rollouts.get(deployment_id, "")
        if rollout_reason and not waiting_reason:
            waiting_reason = "rolling update: " + rollout_reason
        status, reason = lifecycle.deployment_status(
            desired=rec.desired,
            variants=views,
            ever_served=ever_served,
            waiting_reason=waiting_reason,
            failure_reasons=summary.failures,
            also_serving=summary.also_serving,
            rolling=bool(rollout_reason),
        )
        if rec.desired == STOPPED and rec.stop_reason and status == common_pb2.DEPLOYMENT_STATUS_STOPPED:
            reason = rec.stop_reason
        if (status, reason, ever_served) != (rec.status, rec.status_reason, rec.ever_served):
            self._write(rec, status=status, reason=reason, ever_served=ever_served)

    def _summarize(self, rec: records_pb2.DeploymentRecord) -> _Summary:
        deployment_id = rec.deployment_id
        allocs = self._store.list_allocations(deployment_id=deployment_id)
        names = {v.name for v in rec.spec.variants}
        views: list[lifecycle.VariantView] = []
        waiting: list[str] = []
        failures: list[str] = []
        also_serving = 0
        for variant in rec.spec.variants:
            mine = [a for a in allocs if a.variant == variant.name]
            template = self._template(deployment_id, variant)
            fresh = [a for a in mine if a.desired == RUNNING and (template is None or rollout.is_fresh(a.spec, template))]
            stale = [a for a in mine if a.desired == RUNNING and a not in fresh]
            old_serving = sum(1 for a in stale if a.routing_state == RS.ROUTING_STATE_STARTED)
            also_serving += old_serving
            placement = self._placements.get((deployment_id, variant.name))
            routes = [a.routing_state for a in fresh]
            view = lifecycle.variant_view(routes, target_count=len(placement.targets) if placement else 0, instances=variant.instances, name=variant.name)
            views.append(dataclasses.replace(
                view, stopping=view.stopping + sum(1 for a in mine if a.desired == STOPPED), replacing=old_serving
            ))
            failures += [a.reason for a in fresh if a.routing_state == RS.ROUTING_STATE_FAILED]
            if placement and not placement.targets and not stale:
                waiting.append(placement.shortfall or _summarize(placement))
        retiring = [a for a in allocs if a.variant not in names]
        also_serving += sum(1 for a in retiring if a.desired == RUNNING and a.routing_state == RS.ROUTING_STATE_STARTED)
        stopping_elsewhere = sum(1 for a in retiring if a.routing_state in (RS.ROUTING_STATE_STARTING, RS.ROUTING_STATE_STARTED, RS.ROUTING_STATE_STOPPING))
        if stopping_elsewhere and views:
            views[0] = dataclasses.replace(views[0], stopping=views[0].stopping + stopping_elsewhere)
        return _Summary(views, waiting, failures, also_serving)

    def _write(self, rec: records_pb2.DeploymentRecord, *, status: lifecycle.DeploymentStatus, reason: str, ever_served: bool) -> None:
        """The one place a deployment's status changes: record, event, hub."""
        deployment_id = rec.deployment_id
        old = rec.status
        lifecycle.status_transition(old, status)  # a derivation bug raises before anything is written
        rec.status, rec.status_reason, rec.ever_served = status, reason, ever_served
        if status == common_pb2.DEPLOYMENT_STATUS_STOPPED and not rec.HasField("stopped_at"):
            rec.stopped_at.CopyFrom(self._now())
        with self._store.transaction():
            self._store.put_deployment(rec)
            if old != status:
                self._events.status(deployment_id, old=old, new=status, reason=reason)
        self._hub.notify(deployment_id)


def _summarize(placement: scheduler.Placement) -> str:
    groups = placement.reason_groups()
    if not groups:
        return "no nodes have joined the fleet"
    return reasons.describe(list(groups))
