"""Stats from every gateway, through real processes: two standalone
`modelfleet-gateway` processes and the embedded gateway serve calls;
GetDeploymentStats sums their counters and lists each one, ListGateways
shows them, and a killed gateway drops out once it stops reporting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from cluster import Cluster, authed_channel, wait_until
from gatewayproc import GatewayProc, start_gateway
from modelbuild import onnx_add

from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.inference import grpc_service_pb2_grpc as pb_grpc
from modelfleet.v1 import common_pb2, gateways_pb2, gateways_pb2_grpc
from modelfleet.v1 import deployments_pb2 as dpb

X = np.arange(4, dtype=np.float32).reshape(1, 4)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    c = Cluster(tmp_path_factory.mktemp("gateway-stats"))
    gateways: list[GatewayProc] = []
    try:
        c.start_control_plane()
        c.start_agent("node-a", cpus=4)
        c.wait_nodes(1)
        assert c.upload(onnx_add(c.root / "add.onnx"), "add").state == common_pb2.MODEL_STATE_NORMAL
        req = dpb.StartDeploymentRequest(model_id="add", model_threads=2, wait_for=dpb.WAIT_FOR_STARTED)
        req.timeout.FromSeconds(60)
        c.deployments.StartDeployment(req, timeout=90)
        gateways = [start_gateway(c, f"gw{i}") for i in range(2)]
        yield {"cluster": c, "gateways": gateways, "infer_key": c.create_key("inference", name="caller").token}
    finally:
        for gw in gateways:
            gw.stop()
        c.close()


def _infer(address: str, token: str, n: int) -> None:
    req = pb.ModelInferRequest(model_name="add")
    req.inputs.add(name="x", datatype="FP32", shape=list(X.shape))
    req.raw_input_contents.append(X.tobytes())
    with authed_channel(address, token) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(n):
            wait_until(lambda: _answers(stub, req), timeout=10, what=f"an answer from {address}")


def _answers(stub: Any, req: pb.ModelInferRequest) -> bool:
    try:
        stub.ModelInfer(req, timeout=10)
        return True
    except Exception:
        return False


def _stats(c: Cluster) -> dpb.GetDeploymentStatsResponse:
    return c.deployments.GetDeploymentStats(dpb.GetDeploymentStatsRequest(deployment_id="add"), timeout=10)


def _gateways(c: Cluster) -> list[gateways_pb2.GatewayInfo]:
    assert c.channel is not None
    stub = gateways_pb2_grpc.GatewaysStub(c.channel)
    return list(stub.ListGateways(gateways_pb2.ListGatewaysRequest(), timeout=10).gateways)


def test_stats_sum_every_gateway_and_a_killed_one_drops_out(fleet: dict[str, Any]) -> None:
    c: Cluster = fleet["cluster"]
    gw0, gw1 = fleet["gateways"]
    token = fleet["infer_key"]
    _infer(c.addr, token, 2)
    _infer(gw0.address, token, 3)
    _infer(gw1.address, token, 4)

    def summed() -> dpb.GetDeploymentStatsResponse | None:
        s = _stats(c)
        counts = {g.address: g.stats.inference_count for g in s.gateways}
        return s if counts.get(gw0.address) == 3 and counts.get(gw1.address) == 4 and len(s.gateways) == 3 else None

    s = wait_until(summed, timeout=10, what="both gateways' reports in the stats")
    assert s.gateway.inference_count == sum(g.stats.inference_count for g in s.gateways) == 9
    assert {g.gateway_id for g in s.gateways} >= {"embedded"}

    listed = {g.address: g for g in _gateways(c)}
    assert {c.addr, gw0.address, gw1.address} <= set(listed)
    for gw in (gw0, gw1):
        info = listed[gw.address]
        assert info.live and info.watching and not info.stale and info.revision > 0 and info.behind >= 0

    cli = subprocess.run(
        [sys.executable, "-m", "modelfleet.cli", "--addr", c.addr, "gateways", "list"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "MODELFLEET_TOKEN": c.token},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    rows = {line.split()[1]: line.split() for line in cli.stdout.splitlines()[1:] if line.strip()}
    assert rows[c.addr][2] == "embedded"
    assert rows[gw0.address][2:3] == ["standalone"] and "live" in rows[gw0.address] and "fresh" in rows[gw0.address]

    text = urllib.request.urlopen(f"http://127.0.0.1:{gw0.metrics_ports[0]}/metrics", timeout=5).read().decode()
    assert 'modelfleet_gateway_request_duration_seconds_count{deployment="add"} 3.0' in text
    assert 'modelfleet_gateway_request_duration_seconds_bucket{deployment="add",le="+Inf"} 3.0' in text
    assert 'modelfleet_gateway_requests_total{deployment="add",status="OK"} 3.0' in text

    os.kill(gw1.pids[0], signal.SIGKILL)
    wait_until(lambda: len(_stats(c).gateways) == 2, timeout=10, what="the killed gateway dropping out of the stats")
    s = _stats(c)
    assert s.gateway.inference_count == 5
    killed = [g for g in _gateways(c) if g.address == gw1.address]
    assert all(not g.live and not g.watching for g in killed)
