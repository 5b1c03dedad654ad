"""The routes a standalone gateway is fed while the control plane recovers
from a restart.

Right after a restart every stored node is SUSPECT until its agent
reconnects (control_plane.fleet.liveness `recover`), so the control plane's
own route table is empty for a moment. Its workers are most likely still
serving (gateways kept calling them during the outage), and a gateway that
took that empty snapshot would fail every call. So the feed's source adds
the started workers of nodes still within their post-restart grace (not yet
reconnected, not yet LOST), from the allocation records: a gateway keeps
them, and a worker that is really gone is skipped by the gateway's retry of
calls that were never accepted. Once the node reconnects its routes come
from the route table again; once it is LOST they are dropped.
Event-loop only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from control_plane.fleet.liveness import Fleet, Liveness
from control_plane.reconcile.records import RS, RUNNING
from control_plane.routes import Route, RouteSource
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, models_pb2

_CACHE_S = 0.1  # one refresh of the feed reads every deployment: compute the recovering nodes once


class RecoveringRouteSource:
    """`source` plus the started workers of nodes within their post-restart grace."""

    def __init__(self, *, source: RouteSource, store: Store, fleet: Fleet) -> None:
        self._source = source
        self._store = store
        self._fleet = fleet
        self._recovering: frozenset[str] = frozenset()
        self._checked = -1.0

    def _recovering_nodes(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._checked >= _CACHE_S:
            self._checked = now
            out = set()
            for node in self._store.list_nodes():
                live = self._fleet.live(node.info.node_id)
                if live is not None and live.state == Liveness.SUSPECT and live.grace_until > 0:
                    out.add(node.info.node_id)
            self._recovering = frozenset(out)
        return self._recovering

    def routes(self, deployment_id: str) -> Sequence[Route]:
        routes = self._source.routes(deployment_id)
        recovering = self._recovering_nodes()
        if not recovering:
            return routes
        extra = [
            Route(a.allocation_id, a.node_id, a.variant, a.worker_address, a.spec.worker_token, (a.spec.model_id, a.spec.model_version))
            for a in self._store.list_allocations(deployment_id=deployment_id)
            if a.node_id in recovering and a.desired == RUNNING and a.routing_state == RS.ROUTING_STATE_STARTED and a.worker_address
        ]
        rec = self._store.get_deployment(deployment_id)
        if not extra or rec is None or rec.desired != RUNNING:
            return routes
        return [*routes, *extra]

    def live_addresses(self) -> set[str]:
        return self._source.live_addresses()

    def version(self, deployment_id: str) -> int:
        return self._source.version(deployment_id)

    def deployment(self, deployment_id: str) -> records_pb2.DeploymentRecord | None:
        return self._source.deployment(deployment_id)

    def deployments(self) -> list[records_pb2.DeploymentRecord]:
        return self._source.deployments()

    def model(self, model_id: str, version: int) -> models_pb2.Model | None:
        return self._source.model(model_id, version)

    def worker_stats(self, deployment_id: str, variant: str) -> Iterable[common_pb2.InferenceStats]:
        return self._source.worker_stats(deployment_id, variant)
