"""What agents report and what liveness changes do to the allocation records,
and pushing each node its complete desired set.

`AgentReports` owns the agent-facing side of reconciling; it writes records
through `AllocationRecords` (control_plane.reconcile.records) and runs ticks
through the `reconcile` callable it is given (the Reconciler's).

`push` sends a node its complete desired set (the specs of its desired
RUNNING allocations) with a new generation (kept on the node record), only
when the set differs from what was last sent on the node's current stream.

`observe` folds an agent's complete list of what it runs into the
allocation records (routing state, worker address, start time) and then
runs a scoped tick over the deployments it touched; reports only record
observations, they never command anything themselves. A desired-STOPPED
allocation is deleted once the agent, having applied a generation without
it, no longer reports it (or reports it STOPPED or FAILED). A full
registration (a node that joins or comes back) marks the STARTED or FAILED
allocations the node no longer runs STARTING again, reconciles the
deployments on the node and the open ones, and sends the node its desired
set.

`on_liveness_change` logs the change, drops the cached node views and runs
a full tick (control_plane.reconcile.reconciler handles a LOST node's allocations).
Event-loop only.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable

from control_plane.fleet.liveness import Fleet
from control_plane.fleet.nodeviews import NodeViews
from control_plane.planning import lifecycle
from control_plane.reconcile.hub import ChangeHub
from control_plane.reconcile.records import (
    RS,
    RUNNING,
    STOPPED,
    AllocationRecords,
    set_route,
)
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2

log = logging.getLogger(__name__)


class AgentReports:
    """Pushes desired sets to agents and folds in their reports (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        fleet: Fleet,
        hub: ChangeHub,
        views: NodeViews,
        records: AllocationRecords,
        reconcile: Callable[[Iterable[str] | None], None],
        open_deployments: Callable[[], set[str]],
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._hub = hub
        self._views = views
        self._records = records
        self._reconcile = reconcile
        self._open = open_deployments  # the deployments with a variant that may take more nodes

    def push(self, node_id: str) -> None:
        """Send the node its complete desired set if it changed on this stream."""
        session = self._fleet.session(node_id)
        node = self._store.get_node(node_id)
        if session is None or node is None:
            return
        specs = sorted(
            (a.spec for a in self._store.list_allocations(node_id=node_id) if a.desired == RUNNING),
            key=lambda s: s.allocation_id,
        )
        digest = hashlib.sha256(b"".join(s.SerializeToString(deterministic=True) for s in specs)).digest()
        if digest == session.sent_digest:
            return
        node.generation += 1
        self._store.put_node(node)
        session.sent_digest = digest
        session.send(agent_pb2.ControlMessage(assignment=agent_pb2.Assignment(generation=node.generation, allocations=specs)))

    def observe(
        self,
        node_id: str,
        reports: Iterable[agent_pb2.AllocationReport],
        *,
        applied_generation: int,
        full_registration: bool = False,
    ) -> None:
        """Record what an agent runs (its complete list), then reconcile.

        Reports for allocations of other nodes or unknown ids change nothing:
        the agent stops those itself, as they are not in its desired set."""
        self._fleet.touch(node_id, applied_generation=applied_generation)
        node = self._store.get_node(node_id)
        caught_up = full_registration or (node is not None and applied_generation >= node.generation)
        by_id = {r.allocation_id: r for r in reports}
        touched: set[str] = set()
        epoch = self._views.epoch
        with self._store.transaction():
            for alloc in self._store.list_allocations(node_id=node_id):
                report = by_id.pop(alloc.allocation_id, None)
                if alloc.desired == STOPPED and caught_up and (report is None or report.routing_state in _DONE):
                    # the agent applied the stop and nothing runs any more
                    reason = "worker stopped" if report is None or not report.reason else report.reason
                    self._records.remove(alloc, reason=reason)
                    touched.add(alloc.deployment_id)
                    continue
                before = alloc.routing_state
                if _apply_report(alloc, report, registration=full_registration):
                    self._records.save(alloc, before=before)
                    touched.add(alloc.deployment_id)
        for stale in by_id:
            log.info("node %s reports allocation %s that is not its own; ignored", node_id, stale)
        if full_registration:
            # the node may be new or changed: reconcile what runs there and what may take it,
            # and send it its desired set
            self._views.refresh(node_id)
            on_node = {a.deployment_id for a in self._store.list_allocations(node_id=node_id)}
            self._reconcile(touched | on_node | self._open())
            self.push(node_id)
        elif touched:
            freed = self._views.epoch != epoch  # a deletion or a failure: open variants may fit now
            self._reconcile(touched | self._open() if freed else touched)
        for deployment_id in touched:
            self._hub.notify(deployment_id)

    def on_liveness_change(self, node_ids: list[str]) -> None:
        """Nodes changed liveness: log it, drop the cached views, run a full tick."""
        affected = {a.deployment_id for n in node_ids for a in self._store.list_allocations(node_id=n)}
        for node_id in node_ids:
            log.warning("node %s is now %s", node_id, self._fleet.state(node_id).value)
        self._views.invalidate()
        self._reconcile(None)
        for deployment_id in affected:
            self._hub.notify(deployment_id)


_DONE = (RS.ROUTING_STATE_STOPPED, RS.ROUTING_STATE_FAILED)


def _apply_report(
    alloc: records_pb2.AllocationRecord,
    report: agent_pb2.AllocationReport | None,
    *,
    registration: bool,
) -> bool:
    """Fold one observation into the record. True if the record changed."""
    if report is None:
        if alloc.desired == STOPPED:
            return False  # not applied yet (see observe)
        if registration and alloc.routing_state in (RS.ROUTING_STATE_STARTED, RS.ROUTING_STATE_FAILED):
            # the node came back without this worker: it is started again
            return set_route(alloc, RS.ROUTING_STATE_STARTING, "restarting on the node")
        return False
    changed = False
    new_state = report.routing_state
    if alloc.desired == STOPPED and new_state in (RS.ROUTING_STATE_STARTING, RS.ROUTING_STATE_STARTED):
        new_state = RS.ROUTING_STATE_STOPPING
    if new_state != RS.ROUTING_STATE_UNSPECIFIED and not lifecycle.check_route_transition(alloc.routing_state, new_state):
        # input from the network, not a bug of ours: the report is ignored, the record stays as it is
        log.warning(
            "allocation %s: report of %s ignored (the route is %s)",
            alloc.allocation_id,
            RS.RoutingState.Name(new_state),
            RS.RoutingState.Name(alloc.routing_state),
        )
        return False
    if new_state != RS.ROUTING_STATE_UNSPECIFIED:
        reason = report.reason
        if alloc.desired == STOPPED and new_state == RS.ROUTING_STATE_STOPPING and alloc.reason:
            reason = alloc.reason  # the control plane's reason for the stop says more than "stopping"
        changed |= set_route(alloc, new_state, reason)
    if report.worker_address != alloc.worker_address:
        alloc.worker_address = report.worker_address
        changed = True
    if new_state == RS.ROUTING_STATE_STARTED and report.HasField("started_at"):
        if alloc.start_time != report.started_at:
            alloc.start_time.CopyFrom(report.started_at)
            changed = True
    return changed
