"""Allocation records and their only writer.

`AllocationRecords` is the one place an allocation's routing state changes:
`save` writes a record and records a routing event (control_plane.reconcile.events)
when its routing state differs from before; `remove` deletes one whose worker
no longer runs; `route` sets a routing state and reason and saves. Where
capacity is freed (a failed worker, a stopped one, a deletion) the node's
cached scheduler view (control_plane.fleet.nodeviews) is refreshed.
Event-loop only.
"""

from __future__ import annotations

import logging

from control_plane.fleet.liveness import Fleet
from control_plane.fleet.nodeviews import NodeViews
from control_plane.planning import lifecycle
from control_plane.reconcile.events import EventLog
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2

log = logging.getLogger(__name__)

RS = common_pb2
RUNNING = records_pb2.DESIRED_STATE_RUNNING
STOPPED = records_pb2.DESIRED_STATE_STOPPED


class AllocationRecords:
    """Writes allocation records with their routing events (see the module docstring)."""

    def __init__(self, *, store: Store, fleet: Fleet, views: NodeViews, events: EventLog) -> None:
        self._store = store
        self._fleet = fleet
        self._views = views
        self._events = events

    def save(self, alloc: records_pb2.AllocationRecord, *, before: lifecycle.RoutingState) -> None:
        """Write alloc; record an event if its routing state differs from before."""
        lifecycle.route_transition(before, alloc.routing_state)  # an illegal move is a bug here: it raises
        self._store.put_allocation(alloc)
        if before != alloc.routing_state:
            self._events.routing(alloc, old=before, new=alloc.routing_state, reason=alloc.reason)
            if alloc.routing_state == RS.ROUTING_STATE_FAILED:
                self._views.refresh(alloc.node_id)  # a failed worker holds nothing
        if alloc.desired == STOPPED and alloc.routing_state == RS.ROUTING_STATE_STOPPED:
            self._views.refresh(alloc.node_id)  # stopped for good: it holds nothing any more

    def remove(self, alloc: records_pb2.AllocationRecord, *, reason: str) -> None:
        """Delete alloc (nothing runs any more); record STOPPED unless it already was."""
        self._store.delete_allocation(alloc.allocation_id)
        self._fleet.forget_stats(alloc.node_id, alloc.allocation_id)
        self._views.refresh(alloc.node_id)  # capacity freed
        if alloc.routing_state != RS.ROUTING_STATE_STOPPED:
            lifecycle.route_transition(alloc.routing_state, RS.ROUTING_STATE_STOPPED)
            self._events.routing(alloc, old=alloc.routing_state, new=RS.ROUTING_STATE_STOPPED, reason=reason)

    def route(self, alloc: records_pb2.AllocationRecord, routing_state: int, reason: str) -> bool:
        """Set alloc's route and save it (with its event). True if it changed."""
        before = alloc.routing_state
        if not set_route(alloc, routing_state, reason):
            return False
        self.save(alloc, before=before)
        return True


def set_route(alloc: records_pb2.AllocationRecord, routing_state: int, reason: str) -> bool:
    """Set alloc's routing state and reason in memory, checked by lifecycle.route_transition (the caller saves). True if either changed."""
    if alloc.routing_state == routing_state and alloc.reason == reason:
        return False
    alloc.routing_state = lifecycle.route_transition(alloc.routing_state, routing_state)  # type: ignore[arg-type]
    alloc.reason = reason
    return True
