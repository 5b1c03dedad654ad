"""Routing states of allocation records, and what the Reconciler derives from
its records for others: the gateway's routing table and deployment statuses.

`Routing` is the lowest base class of the Reconciler
(control_plane.reconcile.reconciler, by way of control_plane.reconcile.reports); the
Reconciler's __init__ sets up the state its methods use.

Every routing-state change goes through `save_allocation` /
`remove_allocation`, which record it as an event (control_plane.reconcile.events) and
refresh the node's cached view where capacity was freed; every status
change is recorded by `_derive_status`, which the reconcile tick calls for
each deployment it reconciles.

Routing for the gateway (`routes`) is rebuilt from the records after every
tick: started allocations (desired RUNNING) of running deployments on READY
nodes, old and new ones alike during a rolling update. Event-loop only.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf import timestamp_pb2

from control_plane.fleet.liveness import Fleet, Liveness
from control_plane.fleet.nodeviews import NodeViews
from control_plane.planning import lifecycle, rollout, scheduler
from control_plane.reconcile.events import EventLog
from control_plane.reconcile.hub import ChangeHub
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, common_pb2, deployments_pb2

log = logging.getLogger("control_plane.reconcile.reconciler")  # the Reconciler's log, whichever module holds the method

RS = common_pb2
RUNNING = records_pb2.DESIRED_STATE_RUNNING
STOPPED = records_pb2.DESIRED_STATE_STOPPED


@dataclass(frozen=True)
class Route:
    """A started worker the gateway may send calls to."""

    allocation_id: str
    node_id: str
    variant: str
    address: str
    token: str = ""  # the worker token the gateway presents ("" = auth off)
    model: tuple[str, int] = ("", 0)  # (model_id, version) the worker serves: what requests are checked against


class Routing:
    """Allocation record writes, the routing table and deployment statuses (see the module docstring)."""

    store: Store
    fleet: Fleet
    hub: ChangeHub
    events: EventLog
    views: NodeViews
    placements: dict[tuple[str, str], scheduler.Placement]
    rollouts: dict[str, str]
    routes: dict[str, list[Route]]

    if TYPE_CHECKING:  # provided by the Reconciler

        def now(self) -> timestamp_pb2.Timestamp: ...

        def template(self, deployment_id: str, variant: deployments_pb2.VariantSpec) -> agent_pb2.AllocationSpec | None: ...

    # ---- allocation records (the one place routing states change) --------------
    def save_allocation(self, alloc: records_pb2.AllocationRecord, *, before: int) -> None:
        """Write alloc; record an event if its routing state differs from before."""
        lifecycle.route_transition(before, alloc.routing_state)  # an illegal move is a bug here: it raises
        self.store.put_allocation(alloc)
        if before != alloc.routing_state:
            self.events.routing(alloc, old=before, new=alloc.routing_state, reason=alloc.reason)
            if alloc.routing_state == RS.ROUTING_STATE_FAILED:
                self.views.refresh(alloc.node_id)  # a failed worker holds nothing
        if alloc.desired == STOPPED and alloc.routing_state == RS.ROUTING_STATE_STOPPED:
            self.views.refresh(alloc.node_id)  # stopped for good: it holds nothing any more

    def remove_allocation(self, alloc: records_pb2.AllocationRecord, *, reason: str) -> None:
        """Delete alloc (nothing runs any more); record STOPPED unless it already was."""
        self.store.delete_allocation(alloc.allocation_id)
        self.fleet.forget_stats(alloc.node_id, alloc.allocation_id)
        self.views.refresh(alloc.node_id)  # capacity freed
        if alloc.routing_state != RS.ROUTING_STATE_STOPPED:
            lifecycle.route_transition(alloc.routing_state, RS.ROUTING_STATE_STOPPED)
            self.events.routing(alloc, old=alloc.routing_state, new=RS.ROUTING_STATE_STOPPED, reason=reason)

    def _route(self, alloc: records_pb2.AllocationRecord, routing_state: int, reason: str) -> bool:
        """Set alloc's route and save it (with its event). True if it changed."""
        before = alloc.routing_state
        if not set_route(alloc, routing_state, reason):
            return False
        self.save_allocation(alloc, before=before)
        return True

    # ---- statuses -----------------------------------------------------------------
    def _derive_status(self, deployment_id: str) -> None:
        rec = self.store.get_deployment(deployment_id)
        if rec is None:
            return
        allocs = self.store.list_allocations(deployment_id=deployment_id)
        names = {v.name for v in rec.spec.variants}
        views: list[lifecycle.VariantView] = []
        waiting: list[str] = []
        failures: list[str] = []
        also_serving = 0
        for variant in rec.spec.variants:
            mine = [a for a in allocs if a.variant == variant.name]
            template = self.template(deployment_id, variant)
            fresh = [a for a in mine if a.desired == RUNNING and (template is None or rollout.is_fresh(a.spec, template))]
            stale = [a for a in mine if a.desired == RUNNING and a not in fresh]
            old_serving = sum(1 for a in stale if a.routing_state == RS.ROUTING_STATE_STARTED)
            also_serving += old_serving
            placement = self.placements.get((deployment_id, variant.name))
            routes = [a.routing_state for a in fresh]
            view = lifecycle.variant_view(routes, target_count=len(placement.targets) if placement else 0, instances=variant.instances, name=variant.name)
            views.append(dataclasses.replace(
                view, stopping=view.stopping + sum(1 for a in mine if a.desired == STOPPED), replacing=old_serving
            ))
            failures += [a.reason for a in fresh if a.routing_state == RS.ROUTING_STATE_FAILED]
            if placement and not placement.targets and not stale:
                waiting.append(placement.shortfall or _summarize(placement.not_chosen))
        retiring = [a for a in allocs if a.variant not in names]
        also_serving += sum(1 for a in retiring if a.desired == RUNNING and a.routing_state == RS.ROUTING_STATE_STARTED)
        stopping_elsewhere = sum(1 for a in retiring if a.routing_state in (RS.ROUTING_STATE_STARTING, RS.ROUTING_STATE_STARTED, RS.ROUTING_STATE_STOPPING))
        if stopping_elsewhere and views:
            views[0] = dataclasses.replace(views[0], stopping=views[0].stopping + stopping_elsewhere)
        ever_served = rec.ever_served or any(v.started for v in views) or also_serving > 0
        waiting_reason = ("waiting for capacity: " + "; ".join(waiting)) if waiting else ""
        rollout_reason = self.rollouts.get(deployment_id, "")
        if rollout_reason and not waiting_reason:
            waiting_reason = "rolling update: " + rollout_reason
        status, reason = lifecycle.deployment_status(
            desired=rec.desired,
            variants=views,
            ever_served=ever_served,
            waiting_reason=waiting_reason,
            failure_reasons=failures,
            also_serving=also_serving,
            rolling=bool(rollout_reason),
        )
        if rec.desired == STOPPED and rec.stop_reason and status == common_pb2.DEPLOYMENT_STATUS_STOPPED:
            reason = rec.stop_reason
        if (status, reason, ever_served) != (rec.status, rec.status_reason, rec.ever_served):
            old = rec.status
            lifecycle.status_transition(old, status)  # a derivation bug raises before anything is written
            rec.status, rec.status_reason, rec.ever_served = status, reason, ever_served
            if status == common_pb2.DEPLOYMENT_STATUS_STOPPED and not rec.HasField("stopped_at"):
                rec.stopped_at.CopyFrom(self.now())
            with self.store.transaction():
                self.store.put_deployment(rec)
                if old != status:
                    self.events.status(deployment_id, old=old, new=status, reason=reason)
            self.hub.notify(deployment_id)

    # ---- routing ----------------------------------------------------------------------
    def _rebuild_routes(self, deployment_ids: set[str] | None = None) -> None:
        """Routes of every deployment (None) or of the given ones only."""
        if deployment_ids is None:
            running = {d.deployment_id for d in self.store.list_deployments() if d.desired == RUNNING}
            allocs = self.store.list_allocations()
            routes: dict[str, list[Route]] = {}
        else:
            running = {d for d in deployment_ids if (r := self.store.get_deployment(d)) and r.desired == RUNNING}
            allocs = [a for d in running for a in self.store.list_allocations(deployment_id=d)]
            routes = {k: v for k, v in self.routes.items() if k not in deployment_ids}
        for alloc in allocs:
            if (
                alloc.deployment_id in running
                and alloc.desired == RUNNING
                and alloc.routing_state == RS.ROUTING_STATE_STARTED
                and alloc.worker_address
                and self.fleet.state(alloc.node_id) == Liveness.READY
            ):
                routes.setdefault(alloc.deployment_id, []).append(
                    Route(alloc.allocation_id, alloc.node_id, alloc.variant, alloc.worker_address, alloc.spec.worker_token,
                          (alloc.spec.model_id, alloc.spec.model_version))
                )
        self.routes = routes


def set_route(alloc: records_pb2.AllocationRecord, routing_state: int, reason: str) -> bool:
    """Set alloc's routing state and reason (checked by lifecycle.route_transition). True if either changed."""
    if alloc.routing_state == routing_state and alloc.reason == reason:
        return False
    alloc.routing_state = lifecycle.route_transition(alloc.routing_state, routing_state)  # type: ignore[arg-type]
    alloc.reason = reason
    return True


def _summarize(not_chosen: dict[str, str] | object) -> str:
    items = dict(not_chosen)  # type: ignore[call-overload]
    if not items:
        return "no nodes have joined the fleet"
    return ", ".join(f"{node}: {why}" for node, why in sorted(items.items()))
