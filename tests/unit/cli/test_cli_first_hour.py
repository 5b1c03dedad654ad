"""First-hour CLI edges (issue 13): `infer --json` is valid JSON, literals out
of a datatype's range are refused by name, a bare host dials port 7070, and
`deployments watch` prints a line only when what it shows changed.

The calls go over a real socket (127.0.0.1:0) to small servicers
that answer with what the test chose (NaN and infinities, repeated snapshots).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from modelfleet.cli import tensors
from modelfleet.cli.client import with_default_port
from modelfleet.cli.main import build_parser, main
from modelfleet.inference import grpc_service_pb2, grpc_service_pb2_grpc
from modelfleet.v1 import common_pb2, deployments_pb2, deployments_pb2_grpc


class EchoInference(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers ModelInfer with its input as output `y`, whatever the values."""

    def ModelInfer(self, request: grpc_service_pb2.ModelInferRequest,
                   context: grpc.ServicerContext) -> grpc_service_pb2.ModelInferResponse:
        (inp,) = request.inputs
        resp = grpc_service_pb2.ModelInferResponse(model_name=request.model_name)
        resp.outputs.add(name="y", datatype=inp.datatype, shape=list(inp.shape))
        resp.raw_output_contents.append(request.raw_input_contents[0])
        return resp


@pytest.fixture
def echo_addr() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(EchoInference(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_infer_json_writes_nan_and_infinity_as_strings(echo_addr: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--addr", echo_addr, "--json", "infer", "d", "--input", "x=[[NaN, Infinity, -Infinity, 1.5]]",
                 "--dtype", "FP32"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON output"))
    assert data["outputs"][0]["data"] == [["NaN", "Infinity", "-Infinity", 1.5]]


@pytest.mark.parametrize(("literal", "dtype", "limit"), [
    ("[1e40]", "FP32", "FP32 (-3.4028234663852886e+38 to 3.4028234663852886e+38)"),
    ("[70000]", "FP16", "FP16 (-65504.0 to 65504.0)"),
    ("[300]", "INT8", "INT8 (-128 to 127)"),
    ("[-1]", "UINT32", "UINT32 (0 to 4294967295)"),
    ("[100000000000000000000]", "INT64", "INT64 (-9223372036854775808 to 9223372036854775807)"),
])
def test_out_of_range_literal_is_refused_naming_input_and_range(
        echo_addr: str, capsys: pytest.CaptureFixture[str], literal: str, dtype: str, limit: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning may leak
        code = main(["--addr", echo_addr, "infer", "d", "--input", f"x={literal}", "--dtype", dtype])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --input x: value ") and f"is out of the range of {limit}" in err


def test_in_range_values_still_convert() -> None:
    assert tensors.to_array([65504.0, -1.0], "FP16").dtype == np.float16
    assert tensors.to_array([127, -128], "INT8").tolist() == [127, -128]
    assert np.isnan(tensors.to_array([float("nan")], "FP32")[0])


@pytest.mark.parametrize(("given", "dialled"), [
    ("127.0.0.1", "127.0.0.1:7070"), ("cp.example", "cp.example:7070"), ("127.0.0.1:9", "127.0.0.1:9"),
    ("[::1]", "[::1]:7070"), ("[::1]:9", "[::1]:9"), ("::1", "[::1]:7070"),
])
def test_an_address_without_port_gets_7070(given: str, dialled: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert with_default_port(given) == dialled
    assert build_parser().parse_args(["--addr", given, "nodes", "list"]).addr == dialled
    assert build_parser().parse_args(["nodes", "list", "--addr", given]).addr == dialled
    monkeypatch.setenv("MODELFLEET_ADDR", given)
    assert build_parser().parse_args(["nodes", "list"]).addr == dialled
    assert build_parser().parse_args(["up", "--listen", given]).listen == dialled


def _snapshot(status: int, state: int, *, reason: str = "", route_reason: str = "", seq: int = 0,
              retiring: bool = False) -> deployments_pb2.WatchDeploymentResponse:
    snap = deployments_pb2.WatchDeploymentResponse()
    dep = snap.deployment
    dep.deployment_id, dep.status, dep.status_reason = "d", status, reason  # type: ignore[assignment]
    alloc = dep.allocations.add(allocation_state=state, variant="m-v2", target_nodes=1)  # type: ignore[arg-type]
    alloc.routing_table["n1"].routing_state = common_pb2.ROUTING_STATE_STARTED
    alloc.routing_table["n1"].reason = route_reason  # not on the line
    if retiring:
        dep.retiring.add(allocation_state=common_pb2.ALLOCATION_STATE_STARTED, variant="m-v1", target_nodes=1)
    if seq:
        snap.events.add(seq=seq)
    return snap


class ChangingDeployments(deployments_pb2_grpc.DeploymentsServicer):
    """An update then a stop, as the control plane streams it: a snapshot per change,
    some changing only what the watch line does not show (route reasons, events)."""

    def WatchDeployment(self, request: deployments_pb2.WatchDeploymentRequest,
                        context: grpc.ServicerContext) -> Iterator[deployments_pb2.WatchDeploymentResponse]:
        running, stopping = common_pb2.DEPLOYMENT_STATUS_RUNNING, common_pb2.DEPLOYMENT_STATUS_STOPPING
        started, stopping_a = common_pb2.ALLOCATION_STATE_STARTED, common_pb2.ALLOCATION_STATE_STOPPING
        yield _snapshot(running, started, retiring=True)
        yield _snapshot(running, started, retiring=True, seq=1)  # an event only
        yield _snapshot(running, started)  # the old variant retired
        yield _snapshot(running, started, route_reason="warm", seq=2)
        yield _snapshot(stopping, stopping_a, reason="stopping")
        yield _snapshot(stopping, stopping_a, reason="stopping", seq=3)
        yield _snapshot(common_pb2.DEPLOYMENT_STATUS_STOPPED, stopping_a)


def test_watch_prints_one_line_per_visible_change(capsys: pytest.CaptureFixture[str]) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    deployments_pb2_grpc.add_DeploymentsServicer_to_server(ChangingDeployments(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert main(["--addr", f"127.0.0.1:{port}", "deployments", "watch", "d", "--until", "stopped"]) == 0
        lines = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines()]
        assert len(lines) == 4 and len(set(lines)) == 4, lines
        assert "retiring m-v1:started" in lines[0] and "retiring" not in lines[1]
        assert "status=stopping" in lines[2] and "status=stopped" in lines[3]
        assert main(["--addr", f"127.0.0.1:{port}", "--json", "deployments", "watch", "d"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 7  # --json: every snapshot
    finally:
        server.stop(None)


class StatsDeployments(deployments_pb2_grpc.DeploymentsServicer):
    def GetDeploymentStats(self, request: deployments_pb2.GetDeploymentStatsRequest,
                           context: grpc.ServicerContext) -> deployments_pb2.GetDeploymentStatsResponse:
        resp = deployments_pb2.GetDeploymentStatsResponse(deployment_id="d", status=common_pb2.DEPLOYMENT_STATUS_RUNNING)
        node = resp.nodes.add(node_id="n1", routing_state=common_pb2.ROUTING_STATE_STARTED)
        node.stats.inference_count, node.stats.average_inference_time_ms = 5, 0.0  # a worker measures 0.000
        resp.gateway.inference_count, resp.gateway.rejected_execution_count = 5, 1
        resp.gateway.last_access.FromSeconds(1_700_000_000)
        return resp


def test_stats_show_only_what_the_gateway_measures(capsys: pytest.CaptureFixture[str]) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    deployments_pb2_grpc.add_DeploymentsServicer_to_server(StatsDeployments(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert main(["--addr", f"127.0.0.1:{port}", "deployments", "stats", "d"]) == 0
    finally:
        server.stop(None)
    header, worker, gateway = (line.split() for line in capsys.readouterr().out.splitlines()[1:])
    row = dict(zip(header[2:], gateway[1:], strict=True))  # "(gateway)" has no routing state
    assert worker[0] == "n1" and "0.000" in worker
    assert row["INFERENCE_COUNT"] == "5" and row["REJECTED_EXECUTION_COUNT"] == "1" and row["ERROR_COUNT"] == "0"
    for unmeasured in ("AVERAGE_INFERENCE_TIME_MS", "PENDING", "THROUGHPUT_LAST_MINUTE", "PEAK_THROUGHPUT_PER_MINUTE"):
        assert row[unmeasured] == "-", (unmeasured, gateway)
