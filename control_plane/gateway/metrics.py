"""The standalone gateway's Prometheus /metrics (`--metrics-port`), served by
prometheus_client's HTTP server on its own thread. A scrape copies the
gateway's counters (dict copies are atomic under the GIL) and formats them:

- modelfleet_gateway_requests_total{deployment, status}: calls by final gRPC status
- modelfleet_gateway_request_duration_seconds{deployment}: histogram of call durations (answered or not)
- modelfleet_gateway_rejected_total{deployment, reason="traffic_limit"}
- modelfleet_gateway_ejected_workers{deployment}: workers out of the rotation (outlier ejection)
- modelfleet_gateway_ejections_total{deployment}: workers taken out of the rotation
- modelfleet_gateway_stale: 1 while the routes watch is down (serving from the last snapshot)
- modelfleet_gateway_stale_seconds: how long it has been stale (0 when fresh)
- modelfleet_gateway_routes_revision: the revision of the routes held
- modelfleet_gateway_watch_reconnects_total: streams of the routes watch that ended
- modelfleet_gateway_snapshots_total: full snapshots applied (a resumed stream applies none)
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from control_plane.gateway.follow import Follower
from control_plane.gateway.service import Gateway
from control_plane.gateway.watched import WatchedRouteSource


class GatewayCollector(Collector):
    def __init__(self, *, gateway: Gateway, follower: Follower, source: WatchedRouteSource) -> None:
        self._gateway = gateway
        self._follower = follower
        self._source = source

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("modelfleet_gateway_requests", "gateway calls by final gRPC status", labels=["deployment", "status"])
        for (deployment, status), n in dict(self._gateway.calls).items():
            requests.add_metric([deployment, status], n)
        yield requests
        durations = HistogramMetricFamily(
            "modelfleet_gateway_request_duration_seconds", "gateway call durations", labels=["deployment"]
        )
        for deployment, (buckets, total) in self._gateway.durations.snapshot().items():
            durations.add_metric([deployment], buckets, total)
        yield durations
        limited = CounterMetricFamily("modelfleet_gateway_rejected", "calls refused by the gateway", labels=["deployment", "reason"])
        for deployment, n in dict(self._gateway.limited).items():
            limited.add_metric([deployment, "traffic_limit"], n)
        yield limited
        yield from outlier_metrics(self._gateway)
        stale = self._follower.stale
        yield GaugeMetricFamily("modelfleet_gateway_stale", "1 while the routes watch is down", value=1 if stale else 0)
        since = time.monotonic() - self._follower.stale_since if stale else 0.0
        yield GaugeMetricFamily("modelfleet_gateway_stale_seconds", "seconds since the routes watch went down", value=since)
        yield GaugeMetricFamily("modelfleet_gateway_routes_revision", "revision of the routes held", value=self._source.revision)
        yield CounterMetricFamily(
            "modelfleet_gateway_watch_reconnects", "routes watch streams that ended", value=self._follower.reconnects
        )
        yield CounterMetricFamily("modelfleet_gateway_snapshots", "full snapshots applied", value=self._source.snapshots)


def outlier_metrics(gateway: Gateway) -> Iterator[Metric]:
    """The gauge and counter of outlier ejection (control_plane.gateway.outliers)."""
    ejected = GaugeMetricFamily("modelfleet_gateway_ejected_workers", "workers out of the gateway's rotation", labels=["deployment"])
    for deployment, n in sorted(gateway.outliers.ejected().items()):
        ejected.add_metric([deployment], n)
    yield ejected
    ejections = CounterMetricFamily("modelfleet_gateway_ejections", "workers taken out of the gateway's rotation", labels=["deployment"])
    for deployment, n in sorted(dict(gateway.outliers.ejections).items()):
        ejections.add_metric([deployment], n)
    yield ejections


def serve_metrics(port: int, collector: GatewayCollector, host: str = "127.0.0.1") -> int:
    """Start the exporter; returns the port (port 0 = any free one)."""
    registry = CollectorRegistry()
    registry.register(collector)
    server, _ = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
