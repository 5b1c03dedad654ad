"""Repeated authentication failures through a real control plane: slowed
down per client, counted in /metrics, logged once; a good key from the same
client is answered at once meanwhile."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster import Cluster, authed_channel, wait_until
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.v1 import deployments_pb2 as dpb
from modelfleet.v1 import deployments_pb2_grpc as dpb_grpc

BAD = "mfk_0123456789abcdef_" + "x" * 43  # the shape of a key, no such key


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, cp_args=["--metrics-port", "0"])
    try:
        c.start_control_plane()
        yield c
    finally:
        c.close()


def metric(c: Cluster, name: str, **labels: str) -> float:
    endpoint_file = c.root / "cp" / "metrics_endpoint"
    endpoint = wait_until(lambda: endpoint_file.exists() and endpoint_file.read_text().strip(), what="metrics endpoint")
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = [s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == name and set(labels.items()) <= set(s.labels.items())]  # fmt: skip
    return sum(found)


def test_failed_keys_are_slowed_down_counted_and_logged_once(cluster: Cluster) -> None:
    c = cluster
    bad = dpb_grpc.DeploymentsStub(authed_channel(c.addr, BAD))
    took = []
    for _ in range(10):
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            bad.ListDeployments(dpb.ListDeploymentsRequest(), timeout=10)
        took.append(time.monotonic() - began)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    print("failed calls (s):", " ".join(f"{t:.3f}" for t in took))
    assert max(took[:5]) < 0.5  # the first few are answered at once
    assert took[-1] >= 0.3 and sum(took[5:]) >= 0.9  # then 0.05, 0.1, 0.2, 0.4, 0.8 s before each answer
    began = time.monotonic()
    c.deployments.ListDeployments(dpb.ListDeploymentsRequest(), timeout=10)  # a good key from the same host
    assert time.monotonic() - began < 0.5
    assert metric(c, "modelfleet_auth_failures_total", reason="invalid") == 10
    assert metric(c, "modelfleet_auth_throttled_total") == 5
    missing = dpb_grpc.DeploymentsStub(grpc.insecure_channel(c.addr))
    with pytest.raises(grpc.RpcError):
        missing.ListDeployments(dpb.ListDeploymentsRequest(), timeout=10)
    assert metric(c, "modelfleet_auth_failures_total", reason="missing") == 1
    warnings = [line for line in c.cp.log().splitlines() if "authentication failed" in line]
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0], warnings
