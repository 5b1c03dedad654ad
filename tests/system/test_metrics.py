"""Prometheus metrics, end to end: a real control plane and agent started with
`--metrics-port 0` (the bound address read back from DATA_DIR/metrics_endpoint),
a deployment started from the CLI with dynamic batching, traffic through the
gateway, then both /metrics endpoints scraped over HTTP and parsed with
prometheus_client's text-format parser.

The agent's endpoint carries its own routing-state gauges and, federated
from the worker, request counts by status, the queue/compute latency
histograms, the batch size histogram, queue depth and RSS, labelled with
node and allocation. The control plane's carries connected nodes,
allocations by state, the routing table, reconcile durations and the
gateway's counts (including traffic-limit refusals).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from cluster import ROOT, Cluster, wait_until
from modelbuild import onnx_add
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.inference import grpc_service_pb2 as v2
from modelfleet.inference import grpc_service_pb2_grpc as v2_grpc
from modelfleet.v1 import common_pb2, deployments_pb2

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(endpoint_file: Path) -> Samples:
    endpoint = wait_until(lambda: endpoint_file.exists() and endpoint_file.read_text().strip(), what=str(endpoint_file))
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels` (0 if none)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{name} {labels} matches {len(found)} samples"
    return found[0] if found else 0.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("metrics"))
    try:
        c.start_control_plane(extra_args=["--metrics-port", "0", "--full-reconcile-every", "0.2"])
        c.start_agent("node-m", cpus=8, extra_args=["--metrics-port", "0"])
        c.wait_nodes(1)
        model = onnx_add(c.root / "add.onnx")
        assert c.upload(model, "add").state == common_pb2.MODEL_STATE_NORMAL
        yield c
    finally:
        c.close()


def cli(c: Cluster, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELFLEET_ADDR": c.addr, "MODELFLEET_TOKEN": c.token, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "modelfleet.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)  # fmt: skip


def infer(c: Cluster, model: str, x: np.ndarray, *, raw: bytes | None = None) -> object:
    req = v2.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes() if raw is None else raw)
    try:
        return v2_grpc.GRPCInferenceServiceStub(c.channel).ModelInfer(req, timeout=60)
    except grpc.RpcError as exc:
        return exc.code()


def test_agent_and_control_plane_metrics_after_batched_gateway_traffic(fleet: Cluster) -> None:
    c = fleet
    started = cli(c, "deployments", "start", "add", "--deployment-id", "m-add", "--max-batch-size", "4",
                  "--max-queue-delay", "30s", "--queue-capacity", "16")  # fmt: skip
    assert started.returncode == 0, started.stderr
    node = c.node_id("node-m")
    # four one-row calls at once: one batch of 4 (the delay is long, the batch goes when full)
    rows = [np.full((1, 4), float(i), np.float32) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda x: infer(c, "m-add", x), rows))
    assert all(isinstance(r, v2.ModelInferResponse) for r in replies), replies
    assert infer(c, "m-add", rows[0], raw=b"\0" * 3) == grpc.StatusCode.INVALID_ARGUMENT  # the gateway validates
    assert infer(c, "no-such-deployment", rows[0]) == grpc.StatusCode.NOT_FOUND
    # a traffic limit (read by the gateway from its record cache, refreshed on update): the burst is two calls
    update = deployments_pb2.UpdateDeploymentRequest(deployment_id="m-add", spec=deployments_pb2.StartDeploymentRequest(
        traffic_limit_qps=0.001))  # fmt: skip
    update.update_mask.paths.append("traffic_limit_qps")
    c.deployments.UpdateDeployment(update, timeout=30)
    outcomes = [infer(c, "m-add", np.ones((4, 4), np.float32)) for _ in range(3)]
    assert all(isinstance(o, v2.ModelInferResponse) for o in outcomes[:2]), outcomes
    assert outcomes[2] == grpc.StatusCode.RESOURCE_EXHAUSTED

    agent = scrape(c.root / "node-m" / "metrics_endpoint")
    mine = {"deployment": "m-add", "node": node}
    assert value(agent, "modelfleet_allocation_routing_state", state="STARTED", **mine) == 1
    assert value(agent, "modelfleet_allocation_routing_state", state="FAILED", **mine) == 0
    assert value(agent, "modelfleet_agent_connected", node=node) == 1
    # federated from the worker, labelled with node and allocation
    assert value(agent, "modelfleet_worker_requests_total", status="OK", **mine) == 6
    assert value(agent, "modelfleet_worker_requests_total", status="INVALID_ARGUMENT", **mine) == 0  # never sent
    assert value(agent, "modelfleet_worker_rejected_total", reason="queue_full", **mine) == 0
    assert value(agent, "modelfleet_worker_timeouts_total", **mine) == 0
    assert value(agent, "modelfleet_worker_batch_size_count", **mine) == 3  # the batch of 4, then two 4-row calls
    assert value(agent, "modelfleet_worker_batch_size_bucket", le="2.0", **mine) == 2  # those ran alone
    assert value(agent, "modelfleet_worker_batch_size_bucket", le="4.0", **mine) == 3
    for hist in ("modelfleet_worker_queue_seconds", "modelfleet_worker_compute_seconds"):
        assert value(agent, f"{hist}_count", **mine) == 6
        assert value(agent, f"{hist}_bucket", le="+Inf", **mine) == 6
        assert value(agent, f"{hist}_sum", **mine) > 0
    assert value(agent, "modelfleet_worker_queue_depth", **mine) == 0
    assert value(agent, "modelfleet_worker_rss_bytes", **mine) > 10 << 20
    allocation = next(dict(ls)["allocation"] for (n, ls), _ in agent.items() if n == "modelfleet_worker_rss_bytes")
    assert allocation.startswith("m-add-")

    plane = scrape(c.root / "cp" / "metrics_endpoint")
    assert value(plane, "modelfleet_connected_nodes") == 1
    assert value(plane, "modelfleet_nodes", state="READY") == 1
    assert value(plane, "modelfleet_allocations", routing_state="STARTED", desired="RUNNING") == 1
    assert value(plane, "modelfleet_routing_state", deployment="m-add", node=node, state="STARTED") == 1
    assert value(plane, "modelfleet_deployments", status="RUNNING") == 1
    assert value(plane, "modelfleet_reconcile_duration_seconds_count", scope="scoped") > 0  # the events' ticks
    wait_until(lambda: value(scrape(c.root / "cp" / "metrics_endpoint"), "modelfleet_reconcile_duration_seconds_count",
                             scope="full") > 0, what="a full reconcile tick")  # fmt: skip
    gateway = {"deployment": "m-add"}
    assert value(plane, "modelfleet_gateway_requests_total", status="OK", **gateway) == 6
    assert value(plane, "modelfleet_gateway_requests_total", status="INVALID_ARGUMENT", **gateway) == 1
    assert value(plane, "modelfleet_gateway_requests_total", status="RESOURCE_EXHAUSTED", **gateway) == 1
    assert value(plane, "modelfleet_gateway_requests_total", deployment="(unknown)", status="NOT_FOUND") == 1
    assert value(plane, "modelfleet_gateway_rejected_total", reason="traffic_limit", **gateway) == 1


def test_worker_metrics_count_rejections_by_status(tmp_path: Path) -> None:
    from modelbuild import onnx_slow
    from workerproc import start_worker

    with start_worker(model=onnx_slow(tmp_path / "slow.onnx"), fmt="onnx", name="slow", workdir=tmp_path,
                      queue_capacity=1, extra_args=["--metrics-port", "0"]) as worker:  # fmt: skip
        port = worker.ready["metrics_port"]
        assert port and port != worker.port
        channel = grpc.insecure_channel(worker.address)
        stub = v2_grpc.GRPCInferenceServiceStub(channel)

        def call(timeout: float) -> grpc.StatusCode:
            req = v2.ModelInferRequest(model_name="slow")
            req.inputs.add(name="x", datatype="FP32", shape=[4])
            req.raw_input_contents.append(np.ones(4, np.float32).tobytes())
            try:
                stub.ModelInfer(req, timeout=timeout)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

        # one runs, one waits (capacity 1), the rest are refused at once
        with ThreadPoolExecutor(5) as pool:
            codes = list(pool.map(call, [60.0] * 5))
        rejected = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert rejected == 3 and codes.count(grpc.StatusCode.OK) == 2
        endpoint = tmp_path / "worker_metrics"
        endpoint.write_text(f"127.0.0.1:{port}")
        samples = scrape(endpoint)
        channel.close()
    assert value(samples, "modelfleet_worker_rejected_total", reason="queue_full", deployment="slow") == rejected
    assert value(samples, "modelfleet_worker_requests_total", status="RESOURCE_EXHAUSTED") == rejected
    assert value(samples, "modelfleet_worker_requests_total", status="OK") == 2
    assert value(samples, "modelfleet_worker_batch_size_count") == 2  # no batching: one run per call
    assert value(samples, "modelfleet_worker_ready") == 1
    assert value(samples, "process_resident_memory_bytes") > 0
