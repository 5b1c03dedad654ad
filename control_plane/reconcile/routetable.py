"""The gateway's routing table, rebuilt from the allocation records.

`RouteTable.rebuild` runs after every reconcile tick (for every deployment,
or only the ones a scoped tick reconciled): a route is a started allocation
(desired RUNNING, with a worker address) of a running deployment on a READY
node, old and new ones alike during a rolling update. Readers get the
table through `routes` / `live_addresses`. Event-loop only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from control_plane.fleet.liveness import Fleet, Liveness
from control_plane.reconcile.records import RS, RUNNING
from control_plane.routes import Route
from control_plane.store import Store

log = logging.getLogger(__name__)


class RouteTable:
    """deployment_id -> the routes of its started workers (see the module docstring)."""

    def __init__(self, *, store: Store, fleet: Fleet) -> None:
        self._store = store
        self._fleet = fleet
        self.by_deployment: dict[str, list[Route]] = {}

    def routes(self, deployment_id: str) -> Sequence[Route]:
        return self.by_deployment.get(deployment_id, ())

    def live_addresses(self) -> set[str]:
        return {r.address for routes in self.by_deployment.values() for r in routes}

    def rebuild(self, deployment_ids: set[str] | None = None) -> None:
        """Routes of every deployment (None) or of the given ones only."""
        if deployment_ids is None:
            running = {d.deployment_id for d in self._store.list_deployments() if d.desired == RUNNING}
            allocs = self._store.list_allocations()
            routes: dict[str, list[Route]] = {}
        else:
            running = {d for d in deployment_ids if (r := self._store.get_deployment(d)) and r.desired == RUNNING}
            allocs = [a for d in running for a in self._store.list_allocations(deployment_id=d)]
            routes = {k: v for k, v in self.by_deployment.items() if k not in deployment_ids}
        for alloc in allocs:
            if (
                alloc.deployment_id in running
                and alloc.desired == RUNNING
                and alloc.routing_state == RS.ROUTING_STATE_STARTED
                and alloc.worker_address
                and self._fleet.state(alloc.node_id) == Liveness.READY
            ):
                routes.setdefault(alloc.deployment_id, []).append(
                    Route(alloc.allocation_id, alloc.node_id, alloc.variant, alloc.worker_address, alloc.spec.worker_token,
                          (alloc.spec.model_id, alloc.spec.model_version))
                )
        self.by_deployment = routes
