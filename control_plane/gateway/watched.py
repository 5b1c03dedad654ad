"""The standalone gateway's `RouteSource` (control_plane.routes), fed by the
routes watch (modelfleet.v1.Gateways/WatchRoutes) instead of the store.

`apply` takes one `RoutesUpdate`: a snapshot replaces everything held, a
change replaces the deployments it names and drops the removed ones; model
versions only accumulate (they never change); verifiers, when present,
replace the gateway's (control_plane.gateway.callers). Each deployment's
`version` grows whenever its entry is replaced, which is what the gateway's
record cache keys on. An update that does not follow the held revision
(another epoch, or a gap) is refused with `OutOfOrder`, so the follower
asks for a fresh snapshot instead of serving a mix. Worker statistics are
not on the watch (`worker_stats` yields nothing): the gateway's
ModelStatistics asks the workers themselves (control_plane/gateway/statistics.py).

Traffic limits are shared: every update says how many gateway processes
watch, and `deployment` hands the gateway a record whose
`traffic_limit_qps` is this process's share (limit / gateways), so the
limit holds for the deployment as a whole; a change of the count re-shares
every deployment (their versions grow). Pure logic, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from control_plane.gateway.callers import Verifiers
from control_plane.routes import Route
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, gateways_pb2, models_pb2


class OutOfOrder(Exception):
    """An update that does not follow the revision held."""


def _route(r: gateways_pb2.GatewayRoute) -> Route:
    return Route(
        allocation_id=r.allocation_id, node_id=r.node_id, variant=r.variant, address=r.address, token=r.token,
        model=(r.model_id, r.model_version),
    )  # fmt: skip


class WatchedRouteSource:
    """RouteSource held in memory from the routes watch (see the module docstring)."""

    def __init__(self, verifiers: Verifiers | None = None) -> None:
        self.verifiers = verifiers or Verifiers()
        self.epoch = 0
        self.revision = 0
        self.snapshots = 0  # how many snapshots were applied (a resume applies none)
        self.gateways = 1  # gateway processes sharing the traffic limits
        self._records: dict[str, records_pb2.DeploymentRecord] = {}  # as received
        self._shared: dict[str, records_pb2.DeploymentRecord] = {}  # with this process's share of the limit
        self._routes: dict[str, tuple[Route, ...]] = {}
        self._versions: dict[str, int] = {}
        self._counter = 0
        self._models: dict[tuple[str, int], models_pb2.Model] = {}

    @property
    def synced(self) -> bool:
        """Whether any snapshot was applied (before it the gateway knows nothing)."""
        return self.snapshots > 0

    def apply(self, update: gateways_pb2.RoutesUpdate) -> None:
        """Apply one update; raises OutOfOrder when it does not follow the held revision."""
        if not update.snapshot and (update.epoch != self.epoch or update.revision != self.revision + 1):
            raise OutOfOrder(
                f"update {update.epoch}/{update.revision} does not follow the held revision {self.epoch}/{self.revision}"
            )
        if update.snapshot:
            gone = set(self._records) - {d.record.deployment_id for d in update.deployments}
            self.snapshots += 1
        else:
            gone = set(update.removed_deployments)
        for deployment_id in gone:
            self._records.pop(deployment_id, None)
            self._shared.pop(deployment_id, None)
            self._routes.pop(deployment_id, None)
            self._bump(deployment_id)
        gateways = max(1, update.gateways)
        reshare = gateways != self.gateways
        self.gateways = gateways
        for entry in update.deployments:
            deployment_id = entry.record.deployment_id
            self._records[deployment_id] = entry.record
            self._routes[deployment_id] = tuple(_route(r) for r in entry.routes)
            if not reshare:
                self._share(deployment_id)
        for deployment_id in self._records if reshare else ():
            self._share(deployment_id)
        for model in update.models:
            self._models[(model.model_id, model.version)] = model
        if update.has_credentials:
            self.verifiers.replace(update.credentials)
        self.epoch, self.revision = update.epoch, update.revision

    def _share(self, deployment_id: str) -> None:
        rec = self._records[deployment_id]
        if rec.spec.traffic_limit_qps > 0 and self.gateways > 1:
            shared = records_pb2.DeploymentRecord()
            shared.CopyFrom(rec)
            shared.spec.traffic_limit_qps = rec.spec.traffic_limit_qps / self.gateways
            rec = shared
        self._shared[deployment_id] = rec
        self._bump(deployment_id)

    def _bump(self, deployment_id: str) -> None:
        self._counter += 1
        self._versions[deployment_id] = self._counter

    # ---- RouteSource ---------------------------------------------------------------
    def routes(self, deployment_id: str) -> Sequence[Route]:
        return self._routes.get(deployment_id, ())

    def live_addresses(self) -> set[str]:
        return {r.address for routes in self._routes.values() for r in routes}

    def version(self, deployment_id: str) -> int:
        return self._versions.get(deployment_id, 0)

    def deployment(self, deployment_id: str) -> records_pb2.DeploymentRecord | None:
        return self._shared.get(deployment_id)

    def deployments(self) -> list[records_pb2.DeploymentRecord]:
        return [self._shared[k] for k in sorted(self._shared)]

    def model(self, model_id: str, version: int) -> models_pb2.Model | None:
        return self._models.get((model_id, version))

    def worker_stats(self, deployment_id: str, variant: str) -> Iterator[common_pb2.InferenceStats]:
        return iter(())
