"""The control plane's `RouteSource` (control_plane.routes) for its in-process
gateway: routes from the RouteTable, records from the store, change versions
from the hub, worker statistics from the fleet. Event-loop only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from control_plane.fleet.liveness import Fleet
from control_plane.reconcile.hub import ChangeHub
from control_plane.reconcile.routetable import RouteTable
from control_plane.routes import Route
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, models_pb2


class StoreRouteSource:
    """RouteSource backed by the reconcile components and the store."""

    def __init__(self, *, table: RouteTable, store: Store, hub: ChangeHub, fleet: Fleet) -> None:
        self._table = table
        self._store = store
        self._hub = hub
        self._fleet = fleet

    def routes(self, deployment_id: str) -> Sequence[Route]:
        return self._table.routes(deployment_id)

    def live_addresses(self) -> set[str]:
        return self._table.live_addresses()

    def version(self, deployment_id: str) -> int:
        return self._hub.version(deployment_id)

    def deployment(self, deployment_id: str) -> records_pb2.DeploymentRecord | None:
        return self._store.get_deployment(deployment_id)

    def deployments(self) -> list[records_pb2.DeploymentRecord]:
        return list(self._store.list_deployments())

    def model(self, model_id: str, version: int) -> models_pb2.Model | None:
        return self._store.get_model(model_id, version)

    def worker_stats(self, deployment_id: str, variant: str) -> Iterator[common_pb2.InferenceStats]:
        for alloc in self._store.list_allocations(deployment_id=deployment_id):
            stats = self._fleet.stats(alloc.node_id, alloc.allocation_id) if alloc.variant == variant else None
            if stats is not None:
                yield stats
