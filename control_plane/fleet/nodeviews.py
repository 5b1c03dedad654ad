"""Cached scheduler views of the fleet's nodes, for the reconciler.

A `scheduler.NodeView` is a node's capacity, labels, readiness and what its
allocations use. Building them all reads every node and allocation: O(nodes
+ allocations). Done on every tick, and ticks follow every agent report and
every start, that is O(nodes x deployments) per event at a thousand of each
(docs/performance.md). `NodeViews` keeps them instead:

- `get()` returns the cached views (built on first use). Placements made in
  a tick update the returned dict in place (the reconciler adds the demand
  of each new allocation), so it stays current as allocations are added.
- `refresh(node_id)` recomputes one node (its record, liveness and usage:
  O(its allocations)) when capacity was freed there or it registered.
- Usage counts every allocation but FAILED ones and desired-STOPPED ones
  that already STOPPED (scheduler.demand_of_allocation of its own spec); a
  SUSPECT node stays ready (keeps what it has) but is not schedulable;
  `cordoned()` are the drained nodes (record not schedulable).
- `invalidate()` drops the cache (liveness changes); `rebuild()` (every full
  tick) rebuilds it and compares a fingerprint of every node's readiness,
  cordon, capacity and labels with the last one.

`epoch` grows whenever capacity may have been freed or a node's eligibility
changed (refresh, invalidate, a changed fingerprint): the reconciler places
*open* variants (every eligible node, or fewer targets than instances)
again only when it moved. Event-loop only, like the reconciler.
"""

from __future__ import annotations

from control_plane.fleet.liveness import Fleet, Liveness
from control_plane.planning import scheduler
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2


class NodeViews:
    def __init__(self, *, store: Store, fleet: Fleet) -> None:
        self._store = store
        self._fleet = fleet
        self._views: dict[str, scheduler.NodeView] | None = None
        self._fingerprint: int | None = None
        self._cordoned: set[str] = set()  # nodes whose record is not schedulable (drained)
        self.epoch = 0

    def get(self) -> dict[str, scheduler.NodeView]:
        """The cached views (the dict itself: a tick's placements update it)."""
        if self._views is None:
            self._views = self._build()
        return self._views

    def cordoned(self) -> frozenset[str]:
        """Drained nodes (record not schedulable, whatever their liveness): their
        allocations are replaced make-before-break. Kept with the views."""
        self.get()
        return frozenset(self._cordoned)

    def rebuild(self) -> dict[str, scheduler.NodeView]:
        """Fresh views (a full tick); the epoch grows if any node's eligibility changed."""
        views = self._views = self._build()
        fingerprint = hash(
            tuple((v.node_id, v.ready, v.schedulable, v.cpus, v.memory_bytes, v.gpus, tuple(sorted(v.labels.items())))
                  for v in views.values())
        )  # fmt: skip
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self.epoch += 1
        return views

    def invalidate(self) -> None:
        """Anything may have changed (e.g. liveness): rebuild on next use."""
        self._views = None
        self.epoch += 1

    def refresh(self, node_id: str) -> None:
        """Recompute one node's view: capacity was freed there, or it (re)registered."""
        self.epoch += 1
        if self._views is None:
            return
        node = self._store.get_node(node_id)
        if node is None:
            self._views.pop(node_id, None)
            self._cordoned.discard(node_id)
            return
        used: dict[str, list[float]] = {}
        for alloc in self._store.list_allocations(node_id=node_id):
            _add_usage(used, alloc)
        self._views[node_id] = self._view(node, used)

    def _build(self) -> dict[str, scheduler.NodeView]:
        used: dict[str, list[float]] = {}
        for alloc in self._store.list_allocations():
            _add_usage(used, alloc)
        self._cordoned = set()
        return {node.info.node_id: self._view(node, used) for node in self._store.list_nodes()}

    def _view(self, node: records_pb2.NodeRecord, used: dict[str, list[float]]) -> scheduler.NodeView:
        node_id = node.info.node_id
        liveness = self._fleet.state(node_id)
        if node.schedulable:
            self._cordoned.discard(node_id)
        else:
            self._cordoned.add(node_id)
        u = used.get(node_id, [0.0, 0, 0])
        return scheduler.NodeView(
            node_id=node_id,
            cpus=node.info.capacity.cpus,
            memory_bytes=node.info.capacity.memory_bytes,
            gpus=node.info.capacity.gpus,
            labels=dict(node.info.labels),
            # a suspect node keeps what it has but gets nothing new
            ready=liveness != Liveness.LOST,
            schedulable=node.schedulable and liveness == Liveness.READY,
            used_cpus=u[0],
            used_memory=int(u[1]),
            used_gpus=int(u[2]),
        )


def _add_usage(used: dict[str, list[float]], alloc: records_pb2.AllocationRecord) -> None:
    """Count what alloc holds on its node, by its own spec (old allocations of a
    rolling update included): used[node] = [cpus, memory, gpus]."""
    if alloc.routing_state == common_pb2.ROUTING_STATE_FAILED:
        return  # a failed worker holds nothing (and is not restarted)
    if alloc.desired == records_pb2.DESIRED_STATE_STOPPED and alloc.routing_state == common_pb2.ROUTING_STATE_STOPPED:
        return  # stopped for good (a wanted one that stopped is started again: still counted)
    demand = scheduler.demand_of_allocation(alloc.spec)
    u = used.setdefault(alloc.node_id, [0.0, 0, 0])
    u[0] += demand.cpus
    u[1] += demand.memory_bytes
    u[2] += demand.gpus
