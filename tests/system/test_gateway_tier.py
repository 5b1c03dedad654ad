"""The gateway as its own tier, through real processes: `modelfleet-gateway`
fed by the routes watch (modelfleet.v1.Gateways/WatchRoutes) answers V2
calls like the embedded gateway, checks API keys itself (a revoked key is
refused at every gateway within 1 s), keeps serving through a kill -9 of
the control plane and catches up after its restart; the watch refuses keys
without the gateway role and revisions from the future, and resumes.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from cluster import Cluster, authed_channel, wait_until
from gatewayproc import GatewayProc, start_gateway
from modelbuild import ADD_CONSTANT, onnx_add
from tcpproxy import TcpProxy

from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.inference import grpc_service_pb2_grpc as pb_grpc
from modelfleet.v1 import auth_pb2, auth_pb2_grpc, common_pb2, gateways_pb2, gateways_pb2_grpc
from modelfleet.v1 import deployments_pb2 as dpb

OUTAGE_S = 6.0  # with the load before and after, ~10 s of calls (the 60 s version is a soak)
X = np.arange(4, dtype=np.float32).reshape(1, 4)


def _request() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="add")
    req.inputs.add(name="x", datatype="FP32", shape=list(X.shape))
    req.raw_input_contents.append(X.tobytes())
    return req


def _start(c: Cluster, *, root_name: str = "add.onnx") -> None:
    c.start_control_plane()
    c.start_agent("node-a", cpus=4)
    c.wait_nodes(1)
    assert c.upload(onnx_add(c.root / root_name), "add").state == common_pb2.MODEL_STATE_NORMAL
    req = dpb.StartDeploymentRequest(model_id="add", model_threads=2, wait_for=dpb.WAIT_FOR_STARTED)
    req.timeout.FromSeconds(60)
    c.deployments.StartDeployment(req, timeout=90)


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    c = Cluster(tmp_path_factory.mktemp("gateway-tier"))
    gateways: list[GatewayProc] = []
    try:
        _start(c)
        gateways = [start_gateway(c, f"gw{i}") for i in range(3)]
        yield {"cluster": c, "gateways": gateways, "infer_key": c.create_key("inference", name="caller")}
    finally:
        for gw in gateways:
            gw.stop()
        c.close()


def _infer(address: str, token: str, timeout: float = 10) -> pb.ModelInferResponse:
    with authed_channel(address, token) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_request(), timeout=timeout)


def _answers(address: str, token: str) -> bool:
    try:
        _infer(address, token)
        return True
    except grpc.RpcError:
        return False


def test_a_standalone_gateway_answers_like_the_embedded_one(fleet: dict[str, Any]) -> None:
    c, gw, key = fleet["cluster"], fleet["gateways"][0], fleet["infer_key"]
    wait_until(lambda: _answers(gw.address, key.token), timeout=30, what="the gateway to serve 'add'")
    embedded, standalone = _infer(c.addr, key.token), _infer(gw.address, key.token)
    out = np.frombuffer(standalone.raw_output_contents[0], dtype=np.float32)
    assert np.array_equal(out, X.ravel() + np.float32(ADD_CONSTANT))
    assert standalone.raw_output_contents == embedded.raw_output_contents
    assert standalone.model_name == embedded.model_name == "add"
    with authed_channel(gw.address, key.token) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="add"), timeout=10)
        assert [(i.name, i.datatype) for i in meta.inputs] == [("x", "FP32")]
        assert stub.ModelReady(pb.ModelReadyRequest(name="add"), timeout=10).ready
        # worker-side statistics: the gateway asks the workers themselves, as the embedded one does
        [stats] = stub.ModelStatistics(pb.ModelStatisticsRequest(name="add"), timeout=10).model_stats
        assert stats.inference_count >= 1 and stats.inference_stats.compute_infer.count >= 1
        with pytest.raises(grpc.RpcError) as bad:
            stub.ModelInfer(pb.ModelInferRequest(model_name="add"), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with grpc.insecure_channel(gw.address) as channel:
        with pytest.raises(grpc.RpcError) as anonymous:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_request(), timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10).live
    metrics = _metrics(gw.metrics_ports[0])
    assert metrics["modelfleet_gateway_stale"] == 0
    assert metrics['modelfleet_gateway_requests_total{deployment="add",status="OK"}'] >= 1


def test_a_revoked_key_is_refused_at_three_gateways_within_a_second(fleet: dict[str, Any]) -> None:
    c, gateways = fleet["cluster"], fleet["gateways"]
    key = c.create_key("inference", name="soon revoked")
    for gw in gateways:
        wait_until(lambda gw=gw: _answers(gw.address, key.token), timeout=30, what=f"{gw.address} to accept the new key")
    auth_pb2_grpc.AuthStub(c.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=key.api_key.key_id), timeout=10)
    revoked_at = time.monotonic()
    refused = set()
    while len(refused) < len(gateways) and time.monotonic() - revoked_at < 5:
        for gw in gateways:
            if gw.address not in refused:
                try:
                    _infer(gw.address, key.token, timeout=2)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
                    refused.add(gw.address)
    took = time.monotonic() - revoked_at
    assert len(refused) == 3 and took < 1.0, f"refused at {len(refused)} gateways after {took:.2f} s"
    assert _answers(gateways[0].address, fleet["infer_key"].token), "other keys still work"


def _limited(address: str, token: str) -> bool:
    with authed_channel(address, token) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(10):
            try:
                stub.ModelInfer(_request(), timeout=5)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return True
    return False


def _paced(address: str, token: str, *, rate: float, seconds: float, out: list[tuple[str, bool]]) -> None:
    """`rate` calls per second for `seconds` (a schedule, not a wait for a state); records (code, pushback)."""
    with authed_channel(address, token) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                stub.ModelInfer(_request(), timeout=5)
                out.append(("OK", False))
            except grpc.RpcError as exc:
                trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
                out.append((exc.code().name, "grpc-retry-pushback-ms" in trailers))


def test_one_traffic_limit_across_three_gateway_processes(fleet: dict[str, Any]) -> None:
    c, gateways, key = fleet["cluster"], fleet["gateways"], fleet["infer_key"]
    update = dpb.UpdateDeploymentRequest(deployment_id="add", spec=dpb.StartDeploymentRequest(traffic_limit_qps=60))
    update.update_mask.paths.append("traffic_limit_qps")
    c.deployments.UpdateDeployment(update, timeout=10)
    try:
        for gw in gateways:
            wait_until(lambda gw=gw: _limited(gw.address, key.token), timeout=10, what=f"the limit at {gw.address}")
        seconds = 3.0
        results: list[list[tuple[str, bool]]] = [[] for _ in gateways]
        threads = [
            threading.Thread(target=_paced, args=(gw.address, key.token), kwargs={"rate": 60.0, "seconds": seconds, "out": out})
            for gw, out in zip(gateways, results)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        calls = [r for out in results for r in out]
        accepted = sum(code == "OK" for code, _ in calls) / seconds
        rejected = [(code, pushback) for code, pushback in calls if code != "OK"]
        assert 54 <= accepted <= 66, f"accepted {accepted:.1f}/s of 180/s offered against a limit of 60/s"
        assert rejected and all(r == ("RESOURCE_EXHAUSTED", True) for r in rejected), set(rejected)
    finally:
        update.spec.traffic_limit_qps = 0
        c.deployments.UpdateDeployment(update, timeout=10)


def _watch(c: Cluster, token: str, **fields: Any) -> Any:
    channel = authed_channel(c.addr, token)
    return channel, gateways_pb2_grpc.GatewaysStub(channel).WatchRoutes(gateways_pb2.WatchRoutesRequest(**fields), timeout=30)


def test_the_watch_needs_the_gateway_role(fleet: dict[str, Any]) -> None:
    c = fleet["cluster"]
    channel, stream = _watch(c, c.create_key("deployer", name="not a gateway").token)
    with channel, pytest.raises(grpc.RpcError) as refused:
        next(stream)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "gateway" in (refused.value.details() or "")


def test_the_watch_resumes_and_refuses_a_revision_from_the_future(fleet: dict[str, Any]) -> None:
    c = fleet["cluster"]
    token = c.create_key("gateway", name="watcher").token
    channel, stream = _watch(c, token)
    with channel:
        snapshot = next(stream)
        stream.cancel()
    assert snapshot.snapshot and [d.record.deployment_id for d in snapshot.deployments] == ["add"]
    assert snapshot.deployments[0].routes and snapshot.deployments[0].routes[0].token, "worker tokens are on the watch"
    assert snapshot.models and snapshot.has_credentials
    channel, stream = _watch(c, token, epoch=snapshot.epoch, revision=snapshot.revision)
    with channel:
        first = next(stream)  # what was missed (this watcher joining, the first one leaving) comes first
        c.create_key("inference", name="a change")  # new verifiers: one update
        updates = [first]
        while not updates[-1].has_credentials and len(updates) < 10:
            updates.append(next(stream))
        stream.cancel()
    assert not any(u.snapshot for u in updates) and {u.epoch for u in updates} == {snapshot.epoch}
    assert [u.revision for u in updates] == list(range(snapshot.revision + 1, snapshot.revision + 1 + len(updates)))
    assert updates[-1].has_credentials
    update = updates[-1]
    channel, stream = _watch(c, token, epoch=snapshot.epoch, revision=update.revision + 1000)
    with channel, pytest.raises(grpc.RpcError) as future:
        next(stream)
    assert future.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"revision {update.revision + 1000} is beyond" in (future.value.details() or "")


def test_a_gateway_whose_stream_breaks_resumes_without_a_snapshot(fleet: dict[str, Any]) -> None:
    c = fleet["cluster"]
    proxy = TcpProxy(c.addr)
    gw = start_gateway(c, "behind-proxy", control_plane=proxy.address)
    try:
        port = gw.metrics_ports[0]
        first = wait_until(lambda: (m := _metrics(port))["modelfleet_gateway_stale"] == 0 and m, timeout=30, what="synced")
        assert first["modelfleet_gateway_snapshots_total"] == 1
        assert proxy.cut() > 0
        c.create_key("inference", name="made while the stream was cut")  # an update to resume into
        wait_until(
            lambda: (m := _metrics(port))["modelfleet_gateway_watch_reconnects_total"] >= 1
            and m["modelfleet_gateway_stale"] == 0 and m["modelfleet_gateway_routes_revision"] > first["modelfleet_gateway_routes_revision"],
            timeout=10, what="the gateway to reconnect and catch up",
        )  # fmt: skip
        assert _metrics(port)["modelfleet_gateway_snapshots_total"] == 1, "a resume, not a fresh snapshot"
    finally:
        gw.stop()
        proxy.close()


def test_processes_share_the_port_and_stop_when_their_supervisor_is_killed(fleet: dict[str, Any]) -> None:
    c, key = fleet["cluster"], fleet["infer_key"]
    gw = start_gateway(c, "supervised", processes=2)
    try:
        assert len(set(gw.pids)) == 2 and len(set(gw.metrics_ports)) == 2
        for port in gw.metrics_ports:  # each process follows the watch on its own
            wait_until(lambda port=port: _metrics(port)["modelfleet_gateway_stale"] == 0, timeout=30, what="synced")
        assert _answers(gw.address, key.token)
        gw.proc.kill()  # SIGKILL: the supervisor cannot pass anything on
        for pid in gw.pids:
            wait_until(lambda pid=pid: not _alive(pid), timeout=15, what=f"gateway process {pid} to stop")
    finally:
        gw.stop()


def test_an_agent_runs_a_gateway_beside_it(fleet: dict[str, Any]) -> None:
    c, key = fleet["cluster"], fleet["infer_key"]
    token_file = c.root / "node-b.gateway.key"
    token_file.write_text(c.create_key("gateway", name="beside node-b").token + "\n")
    agent = c.start_agent("node-b", cpus=1, extra_args=["--gateway-port", "0", "--gateway-token-file", str(token_file)])
    ready = c.root / "node-b" / "gateway.ready"
    info = wait_until(lambda: ready.exists() and json.loads(ready.read_text()), timeout=60, what="node-b's gateway")
    address = f"127.0.0.1:{info['port']}"
    wait_until(lambda: _answers(address, key.token), timeout=30, what="the gateway beside node-b to serve 'add'")
    gateway_pid = info["pids"][0]
    assert agent.stop() == 0
    wait_until(lambda: not _alive(gateway_pid), timeout=15, what="the gateway to stop with its agent")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _load(address: str, token: str, stop: threading.Event, results: dict[str, Any]) -> None:
    with authed_channel(address, token) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            try:
                stub.ModelInfer(_request(), timeout=5)
                results["ok"] += 1
            except grpc.RpcError as exc:
                results["failed"].append(f"{exc.code().name}: {exc.details()}")


def test_gateways_serve_through_a_control_plane_kill_and_catch_up(tmp_path: Any) -> None:
    c = Cluster(tmp_path)
    gw: GatewayProc | None = None
    try:
        _start(c)
        gw = start_gateway(c, "pair", processes=2)
        token = c.create_key("inference", name="load").token
        wait_until(lambda: _answers(gw.address, token), timeout=30, what="the gateway to serve")
        stop, results = threading.Event(), {"ok": 0, "failed": []}
        threads = [threading.Thread(target=_load, args=(gw.address, token, stop, results)) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: results["ok"] >= 20, timeout=30, what="steady load")
            assert c.cp is not None
            c.cp.kill()
            ports = gw.metrics_ports
            wait_until(lambda: all(_metrics(p)["modelfleet_gateway_stale"] == 1 for p in ports), timeout=10, what="stale")
            during = results["ok"]
            threading.Event().wait(OUTAGE_S)  # the outage's length, not a wait for a state
            assert results["ok"] >= during + 50, "calls are served while the control plane is down"
            c.start_control_plane(listen=c.addr)
            wait_until(lambda: all(_metrics(p)["modelfleet_gateway_stale"] == 0 for p in ports), timeout=15, what="fresh")
            update = dpb.UpdateDeploymentRequest(deployment_id="add", spec=dpb.StartDeploymentRequest(traffic_limit_qps=1))
            update.update_mask.paths.append("traffic_limit_qps")
            c.deployments.UpdateDeployment(update, timeout=10)
            changed_at = time.monotonic()
            wait_until(lambda: any("traffic limit" in f for f in results["failed"]), timeout=5, what="the new limit at the gateway")
            took = time.monotonic() - changed_at
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        before_limit = [f for f in results["failed"] if "traffic limit" not in f]
        assert before_limit == [], before_limit[:5]
        assert took < 1.0, f"the change reached the gateway after {took:.2f} s"
    finally:
        if gw is not None:
            gw.stop()
        c.close()
