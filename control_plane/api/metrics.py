"""The control plane's Prometheus /metrics (`--metrics-port`).

Served by prometheus_client's HTTP server on its own thread. Fleet and
deployment state is loop-owned (the store is used from the event loop only),
so a scrape computes its snapshot *on the loop* with
`asyncio.run_coroutine_threadsafe` and only formats it on the scrape thread.
A scrape costs O(nodes + allocations + deployments); serving pays nothing.

- modelfleet_nodes{state}: known nodes by liveness (READY, SUSPECT, LOST)
- modelfleet_connected_nodes: agents with an open stream
- modelfleet_allocations{routing_state, desired}: allocation records by state
- modelfleet_routing_state{deployment, variant, node, state}: 1 for each
  allocation's routing state (the routing table, per deployment and node)
- modelfleet_deployments{status}: deployments by status
- modelfleet_autoscaling_allocations{deployment, variant, kind}: per
  autoscaled variant its allocations STARTED now (kind="current"), wanted
  ("target") and its "min" and "max"
- modelfleet_reconcile_duration_seconds{scope}: histogram of reconcile ticks
  ("full": every deployment; "scoped": the deployments an event touched)
- modelfleet_gateway_requests_total{deployment, status}: gateway ModelInfer calls
  by final gRPC status; modelfleet_gateway_rejected_total{deployment,
  reason="traffic_limit"}: calls refused by the traffic limit
- modelfleet_gateway_ejected_workers{deployment}, modelfleet_gateway_ejections_total{deployment}:
  outlier ejection (control_plane.gateway.outliers)
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control_plane.auth.throttle import REASONS, FailureThrottle
from control_plane.fleet.liveness import Fleet, Liveness
from control_plane.gateway.metrics import outlier_metrics
from control_plane.gateway.service import Gateway
from control_plane.planning import autoscale
from control_plane.reconcile.reconciler import Reconciler
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2

SNAPSHOT_TIMEOUT = 10.0
RECONCILE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _routing(value: int) -> str:
    return common_pb2.RoutingState.Name(value).removeprefix("ROUTING_STATE_")


def _desired(value: int) -> str:
    return records_pb2.DesiredState.Name(value).removeprefix("DESIRED_STATE_")


@dataclass
class _Snapshot:
    nodes: collections.Counter[str] = field(default_factory=collections.Counter)
    connected: int = 0
    allocations: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    routes: list[tuple[str, str, str, str]] = field(default_factory=list)
    deployments: collections.Counter[str] = field(default_factory=collections.Counter)
    calls: dict[tuple[str, str], int] = field(default_factory=dict)
    limited: dict[str, int] = field(default_factory=dict)
    auth_failures: dict[str, int] = field(default_factory=dict)
    auth_throttled: int = 0
    scaling: list[tuple[str, str, dict[str, int]]] = field(default_factory=list)


class ControlPlaneCollector(Collector):
    def __init__(
        self, *, store: Store, fleet: Fleet, gateway: Gateway, loop: asyncio.AbstractEventLoop,
        auth_throttle: FailureThrottle | None = None,
    ) -> None:  # fmt: skip
        self._throttle = auth_throttle
        self._store = store
        self._fleet = fleet
        self._gateway = gateway
        self._loop = loop

    async def _snapshot(self) -> _Snapshot:
        store, fleet = self._store, self._fleet
        snap = _Snapshot()
        for node in store.list_nodes():
            node_id = node.info.node_id
            snap.nodes[fleet.state(node_id).value] += 1
            snap.connected += fleet.session(node_id) is not None
        for alloc in store.list_allocations():
            routing = _routing(alloc.routing_state)
            snap.allocations[(routing, _desired(alloc.desired))] += 1
            snap.routes.append((alloc.deployment_id, alloc.variant, alloc.node_id, routing))
        for rec in store.list_deployments():
            snap.deployments[common_pb2.DeploymentStatus.Name(rec.status).removeprefix("DEPLOYMENT_STATUS_")] += 1
            if rec.desired == records_pb2.DESIRED_STATE_RUNNING:
                snap.scaling.extend(_scaling(store, rec))
        if self._throttle is not None:
            snap.auth_failures = dict(self._throttle.failures)
            snap.auth_throttled = self._throttle.throttled
        snap.calls = dict(self._gateway.calls)
        snap.limited = dict(self._gateway.limited)
        return snap

    def collect(self) -> Iterator[Metric]:
        snap = asyncio.run_coroutine_threadsafe(self._snapshot(), self._loop).result(SNAPSHOT_TIMEOUT)
        nodes = GaugeMetricFamily("modelfleet_nodes", "known nodes by liveness", labels=["state"])
        for state in Liveness:
            nodes.add_metric([state.value], snap.nodes.get(state.value, 0))
        yield nodes
        yield GaugeMetricFamily("modelfleet_connected_nodes", "agents with an open stream", value=snap.connected)
        allocs = GaugeMetricFamily(
            "modelfleet_allocations", "allocation records by routing state and desired state",
            labels=["routing_state", "desired"],
        )  # fmt: skip
        for (routing, desired), count in sorted(snap.allocations.items()):
            allocs.add_metric([routing, desired], count)
        yield allocs
        routes = GaugeMetricFamily(
            "modelfleet_routing_state", "1 for each allocation's routing state, per deployment and node",
            labels=["deployment", "variant", "node", "state"],
        )  # fmt: skip
        for deployment, variant, node, routing in snap.routes:
            routes.add_metric([deployment, variant, node, routing], 1)
        yield routes
        deployments = GaugeMetricFamily("modelfleet_deployments", "deployments by status", labels=["status"])
        for status, count in sorted(snap.deployments.items()):
            deployments.add_metric([status], count)
        yield deployments
        scaling = GaugeMetricFamily(
            "modelfleet_autoscaling_allocations", "per autoscaled variant: allocations started (current), wanted (target), min, max",
            labels=["deployment", "variant", "kind"],
        )  # fmt: skip
        for deployment, variant, counts in snap.scaling:
            for kind, count in counts.items():
                scaling.add_metric([deployment, variant, kind], count)
        yield scaling
        calls = CounterMetricFamily(
            "modelfleet_gateway_requests", "gateway ModelInfer calls by final status", labels=["deployment", "status"]
        )
        for (deployment, status), count in sorted(snap.calls.items()):
            calls.add_metric([deployment, status], count)
        yield calls
        limited = CounterMetricFamily(
            "modelfleet_gateway_rejected", "gateway calls refused at once", labels=["deployment", "reason"]
        )
        for deployment, count in sorted(snap.limited.items()):
            limited.add_metric([deployment, "traffic_limit"], count)
        yield limited
        yield from outlier_metrics(self._gateway)
        failures = CounterMetricFamily(
            "modelfleet_auth_failures", "calls refused for their credentials, by reason", labels=["reason"]
        )
        for reason in REASONS:
            failures.add_metric([reason], snap.auth_failures.get(reason, 0))
        yield failures
        yield CounterMetricFamily(
            "modelfleet_auth_throttled", "failed authentications answered after a delay", value=snap.auth_throttled
        )


def _scaling(store: Store, rec: records_pb2.DeploymentRecord) -> Iterator[tuple[str, str, dict[str, int]]]:
    if not any(v.HasField("autoscaling") for v in rec.spec.variants):
        return
    allocs = store.list_allocations(deployment_id=rec.deployment_id)
    for variant in rec.spec.variants:
        st = autoscale.status(rec, variant, allocs)
        if st is not None:
            counts = {"current": st.current, "target": st.target, "min": st.min_allocations, "max": st.max_allocations}
            yield rec.deployment_id, variant.name, counts


def serve_metrics(
    *,
    store: Store,
    fleet: Fleet,
    reconciler: Reconciler,
    gateway: Gateway,
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    auth_throttle: FailureThrottle | None = None,
) -> int:
    """Start /metrics on its own thread, hook the reconcile histogram; returns the bound port."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControlPlaneCollector(store=store, fleet=fleet, gateway=gateway, loop=loop, auth_throttle=auth_throttle))
    duration = Histogram(
        "modelfleet_reconcile_duration_seconds", "duration of one reconcile tick", ["scope"],
        buckets=RECONCILE_BUCKETS, registry=registry,
    )  # fmt: skip
    reconciler.on_tick = lambda seconds, scope: duration.labels(scope).observe(seconds)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
