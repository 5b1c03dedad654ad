"""The vertical slice through real processes: a control plane and node agents
on 127.0.0.1 (port 0), real workers, real onnxruntime and torch, the real
tritonclient (in a subprocess), the real SQLite file.

One control plane with two agents serves the module; tests that restart or
kill processes build their own cluster.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from cluster import ROOT, Cluster, authed_channel, wait_until, worker_processes
from modelbuild import corrupt_file, onnx_add, onnx_slow, onnx_warmup_fails, torchscript_add

from modelfleet.inference import grpc_service_pb2 as v2
from modelfleet.inference import grpc_service_pb2_grpc as v2_grpc
from modelfleet.v1 import common_pb2, models_pb2
from modelfleet.v1 import deployments_pb2 as dpb

STARTED = common_pb2.ROUTING_STATE_STARTED
FAILED = common_pb2.ROUTING_STATE_FAILED
TRITON = ROOT / "tests" / "tools" / "triton_call.py"


def start(c: Cluster, model_id: str, **fields: object) -> dpb.StartDeploymentResponse:
    req = dpb.StartDeploymentRequest(model_id=model_id, **fields)  # type: ignore[arg-type]
    if not req.HasField("timeout"):
        req.timeout.FromSeconds(60)
    return c.deployments.StartDeployment(req, timeout=90)


def stop(c: Cluster, deployment_id: str) -> dpb.Deployment:
    req = dpb.StopDeploymentRequest(deployment_id=deployment_id, wait=True)
    req.timeout.FromSeconds(30)
    return c.deployments.StopDeployment(req, timeout=40).deployment


_BASETEMP: list[bytes] = []  # this pytest session's tmp dir: workers of other sessions on the machine are not ours


@pytest.fixture(autouse=True)
def _this_sessions_workers(tmp_path_factory: pytest.TempPathFactory) -> None:
    _BASETEMP[:] = [str(tmp_path_factory.getbasetemp().resolve()).encode()]


def worker_pids(deployment_id: str, under: Path | None = None) -> set[int]:
    """Live inference worker processes serving deployment_id (this session's only;
    with `under`, only those whose ready file lies below that directory: one fleet's)."""
    root = under if under is not None else (Path(_BASETEMP[0].decode()) if _BASETEMP else None)
    return {pid for pid, (name, _) in worker_processes(root).items() if name == deployment_id}


def triton_infer(url: str, model: str, inputs: dict[str, np.ndarray], tmp: Path, *, token: str = "") -> dict[str, object]:
    args = [sys.executable, str(TRITON), "infer", "--url", url, "--model", model, "--out-dir", str(tmp), "--token", token]
    for name, array in inputs.items():
        path = tmp / f"in-{name}.npy"
        np.save(path, array)
        args += ["--input", f"{name}={path}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    if "outputs" in out:
        out["arrays"] = {k: np.load(v) for k, v in out["outputs"].items()}
    return out


def v2_infer(
    address: str, model: str, x: np.ndarray, *, name: str = "x", timeout: float = 30, token: str = ""
) -> v2.ModelInferResponse:
    with authed_channel(address, token) as channel:
        req = v2.ModelInferRequest(model_name=model)
        req.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.astype(np.float32).tobytes())
        return v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start_control_plane()
        # advertised CPUs (the scheduler's budget), more than this 2-core machine has
        c.start_agent("node-a", cpus=16)
        c.start_agent("node-b", cpus=16)
        c.wait_nodes(2)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def models(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    paths = {"add": onnx_add(d / "add.onnx"), "ts": torchscript_add(d / "add.pt"), "slow": onnx_slow(d / "slow.onnx")}
    assert cluster.upload(paths["add"], "add").state == common_pb2.MODEL_STATE_NORMAL
    assert cluster.upload(paths["ts"], "ts-add", fmt=common_pb2.MODEL_FORMAT_TORCHSCRIPT).state == common_pb2.MODEL_STATE_NORMAL
    assert cluster.upload(paths["slow"], "slow").state == common_pb2.MODEL_STATE_NORMAL
    return paths


def test_onnx_through_gateway_and_worker_matches_onnxruntime(cluster: Cluster, models: dict[str, Path], tmp_path: Path) -> None:
    t0 = time.monotonic()
    resp = start(cluster, "add", deployment_id="add-both", wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED, inference_threads=1, model_threads=2, queue_capacity=64)
    elapsed = time.monotonic() - t0
    alloc = resp.allocation
    assert alloc.allocation_state == common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED
    assert alloc.task_parameters.model_id == "add"
    assert alloc.task_parameters.model_bytes == models["add"].stat().st_size
    assert (alloc.task_parameters.inference_threads, alloc.task_parameters.model_threads, alloc.task_parameters.queue_capacity) == (1, 2, 64)
    assert len(alloc.routing_table) == 2 and all(e.routing_state == STARTED for e in alloc.routing_table.values())
    assert alloc.start_time.seconds > 0
    print(f"start -> fully_allocated on 2 nodes: {elapsed:.2f}s")

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = ort.InferenceSession(str(models["add"])).run(None, {"x": x})[0]
    via_gateway = triton_infer(cluster.addr, "add-both", {"x": x}, tmp_path, token=cluster.token)
    np.testing.assert_array_equal(via_gateway["arrays"]["y"], expected)
    for entry in alloc.routing_table.values():
        direct = triton_infer(entry.worker_address, "add-both", {"x": x}, tmp_path, token=cluster.token)
        np.testing.assert_array_equal(direct["arrays"]["y"], expected)
    stats = cluster.deployments.GetDeploymentStats(dpb.GetDeploymentStatsRequest(deployment_id="add-both"))
    assert len(stats.nodes) == 2
    wait_until(
        lambda: cluster.deployments.GetDeploymentStats(dpb.GetDeploymentStatsRequest(deployment_id="add-both")).total.inference_count >= 3,
        timeout=10, what="inference counts in heartbeats",
    )


def test_torchscript_matches_torch(cluster: Cluster, models: dict[str, Path], tmp_path: Path) -> None:
    import torch

    start(cluster, "ts-add", wait_for=dpb.WAIT_FOR_STARTED)
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    expected = torch.jit.load(str(models["ts"]))(torch.from_numpy(x)).numpy()
    out = triton_infer(cluster.addr, "ts-add", {"x": x}, tmp_path, token=cluster.token)
    np.testing.assert_array_equal(out["arrays"]["OUTPUT__0"], expected)


def test_wait_for_starting_returns_before_started(cluster: Cluster, models: dict[str, Path]) -> None:
    resp = start(cluster, "add", deployment_id="add-starting", wait_for=dpb.WAIT_FOR_STARTING)
    # recorded and sent to both nodes; a worker takes far longer to load than this reply
    assert resp.deployment.deployment_id == "add-starting"
    assert len(resp.allocation.routing_table) == 2
    assert resp.allocation.allocation_state == common_pb2.ALLOCATION_STATE_STARTING
    wait_until(lambda: set(cluster.routes("add-starting").values()) == {STARTED}, timeout=60, what="add-starting started")


def test_timeout_is_deadline_exceeded_and_deployment_keeps_starting(cluster: Cluster, models: dict[str, Path]) -> None:
    req = dpb.StartDeploymentRequest(model_id="add", deployment_id="add-timeout", wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED)
    req.timeout.FromMilliseconds(1)
    with pytest.raises(grpc.RpcError) as err:
        cluster.deployments.StartDeployment(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "fully_allocated" in err.value.details() and "keeps starting" in err.value.details()
    wait_until(
        lambda: cluster.get("add-timeout").allocations[0].allocation_state == common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED,
        timeout=60, what="add-timeout fully allocated",
    )


def test_queue_full_rejects_at_once(cluster: Cluster, models: dict[str, Path]) -> None:
    resp = start(cluster, "slow", instances=1, queue_capacity=2, model_threads=1)
    (entry,) = resp.allocation.routing_table.values()
    x = np.ones(4, dtype=np.float32)

    def call(_: int) -> str:
        try:
            v2_infer(entry.worker_address, "slow", x, timeout=60, token=cluster.token)
            return "OK"
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    rejected = [r for r in results if r.startswith("RESOURCE_EXHAUSTED")]
    # 1 running + 2 queued are accepted; the other 5 are rejected at once
    assert len(rejected) == 5, results
    assert all("queue is full (capacity 2)" in r for r in rejected)
    assert results.count("OK") == 3
    wait_until(
        lambda: cluster.deployments.GetDeploymentStats(dpb.GetDeploymentStatsRequest(deployment_id="slow")).total.rejected_execution_count == 5,
        timeout=10, what="rejected_execution_count 5",
    )


def test_error_cases_of_the_contract(cluster: Cluster, models: dict[str, Path], tmp_path: Path) -> None:
    cases = [
        (dpb.StartDeploymentRequest(model_id="missing-model"), grpc.StatusCode.NOT_FOUND, "missing-model"),
        (dpb.StartDeploymentRequest(model_id="add", queue_capacity=1_000_001), grpc.StatusCode.INVALID_ARGUMENT, "queue_capacity"),
        (dpb.StartDeploymentRequest(model_id="add", deployment_id="Bad Id"), grpc.StatusCode.INVALID_ARGUMENT, "deployment_id"),
        (dpb.StartDeploymentRequest(model_id="add", deployment_id="huge", inference_threads=16, model_threads=2), grpc.StatusCode.RESOURCE_EXHAUSTED, "cpus"),
        (dpb.StartDeploymentRequest(model_id="add", deployment_id="add-both"), grpc.StatusCode.ALREADY_EXISTS, "add-both"),
    ]
    if not _exists(cluster, "add-both"):
        start(cluster, "add", deployment_id="add-both", wait_for=dpb.WAIT_FOR_STARTING)
    for req, code, words in cases:
        with pytest.raises(grpc.RpcError) as err:
            cluster.deployments.StartDeployment(req, timeout=30)
        assert err.value.code() == code, (req, err.value.details())
        assert words in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        cluster.models.DeleteModel(models_pb2.DeleteModelRequest(model_id="add"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        cluster.deployments.GetDeployment(dpb.GetDeploymentRequest(deployment_id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    out = triton_infer(cluster.addr, "nope", {"x": np.zeros((1, 4), np.float32)}, tmp_path, token=cluster.token)
    assert "NOT_FOUND" in out["error"]["status"]


def _exists(c: Cluster, deployment_id: str) -> bool:
    try:
        c.get(deployment_id)
        return True
    except grpc.RpcError:
        return False


def test_corrupt_model_is_invalid_and_cannot_deploy(cluster: Cluster, tmp_path: Path) -> None:
    model = cluster.upload(corrupt_file(tmp_path / "bad.onnx"), "corrupt")
    assert model.state == common_pb2.MODEL_STATE_INVALID
    assert model.state_reason
    with pytest.raises(grpc.RpcError) as err:
        start(cluster, "corrupt")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "INVALID" in err.value.details()


def test_model_failing_in_the_worker_is_failed_with_reason_and_not_retried(cluster: Cluster, tmp_path: Path) -> None:
    assert cluster.upload(onnx_warmup_fails(tmp_path / "wf.onnx"), "warmup-fails").state == common_pb2.MODEL_STATE_NORMAL
    with pytest.raises(grpc.RpcError) as err:
        start(cluster, "warmup-fails")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    deployment = cluster.get("warmup-fails")
    assert deployment.status == common_pb2.DEPLOYMENT_STATUS_FAILED
    for entry in deployment.allocations[0].routing_table.values():
        assert entry.routing_state == FAILED
        assert "load error" in entry.reason, entry.reason
    assert not worker_pids("warmup-fails", cluster.root)
    stop(cluster, "warmup-fails")


def test_watch_streams_snapshots_until_stopped_and_stop_frees_workers(cluster: Cluster, models: dict[str, Path]) -> None:
    start(cluster, "add", deployment_id="add-watch", wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED)
    pids = worker_pids("add-watch", cluster.root)
    assert len(pids) == 2
    stream = cluster.deployments.WatchDeployment(dpb.WatchDeploymentRequest(deployment_id="add-watch"), timeout=60)
    first = next(stream)
    assert first.deployment.status == common_pb2.DEPLOYMENT_STATUS_RUNNING
    cluster.deployments.StopDeployment(dpb.StopDeploymentRequest(deployment_id="add-watch"))
    seen = []
    for snapshot in stream:
        seen.append(snapshot.deployment.status)
        if snapshot.deployment.status == common_pb2.DEPLOYMENT_STATUS_STOPPED:
            break
    stream.cancel()
    assert seen[-1] == common_pb2.DEPLOYMENT_STATUS_STOPPED
    wait_until(lambda: not worker_pids("add-watch", cluster.root), timeout=30, what="workers of add-watch to exit")
    assert not any(pid_alive(p) for p in pids)
    listed = {d.deployment_id: d.status for d in cluster.deployments.ListDeployments(dpb.ListDeploymentsRequest()).deployments}
    assert listed["add-watch"] == common_pb2.DEPLOYMENT_STATUS_STOPPED
    cluster.deployments.DeleteDeployment(dpb.DeleteDeploymentRequest(deployment_id="add-watch"))
    assert "add-watch" not in {d.deployment_id for d in cluster.deployments.ListDeployments(dpb.ListDeploymentsRequest()).deployments}


def test_retried_start_with_the_same_request_id_creates_nothing_twice(cluster: Cluster, models: dict[str, Path]) -> None:
    first = start(cluster, "add", deployment_id="add-idem", request_id="req-1")
    again = start(cluster, "add", deployment_id="add-idem", request_id="req-1")
    assert again.deployment.revision == first.deployment.revision
    assert {e.allocation_id for e in again.allocation.routing_table.values()} == {e.allocation_id for e in first.allocation.routing_table.values()}
    assert len(worker_pids("add-idem", cluster.root)) == 2


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_third_agent_joins_and_all_nodes_deployment_reaches_it(cluster: Cluster, models: dict[str, Path]) -> None:
    start(cluster, "add", deployment_id="add-join", wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED)
    before = cluster.get("add-join").allocations[0].routing_table
    assert len(before) == 2
    cluster.start_agent("node-c", cpus=16)
    node_c = cluster.node_id("node-c")
    wait_until(lambda: cluster.routes("add-join").get(node_c) == STARTED, timeout=60, what="add-join started on node-c")
    after = cluster.get("add-join").allocations[0]
    assert after.allocation_state == common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED
    assert len(after.routing_table) == 3
    # the two earlier allocations were not restarted
    for node, entry in before.items():
        assert after.routing_table[node].allocation_id == entry.allocation_id
        assert after.routing_table[node].worker_address == entry.worker_address


def test_control_plane_restart_keeps_everything_and_restarts_no_worker(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    try:
        c.start_control_plane()
        c.start_agent("node-a", cpus=2)
        c.start_agent("node-b", cpus=2)
        c.wait_nodes(2)
        c.upload(onnx_add(tmp_path / "add.onnx"), "add")
        start(c, "add", wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED)
        pids = worker_pids("add", c.root)
        table = c.routes("add")
        addresses = {n: e.worker_address for n, e in c.get("add").allocations[0].routing_table.items()}
        assert len(pids) == 2
        assert c.cp is not None
        c.cp.kill()
        # workers keep serving while the control plane is down
        x = np.ones((1, 4), np.float32)
        for address in addresses.values():
            assert v2_infer(address, "add", x, token=c.token).raw_output_contents
        c.start_control_plane(listen=c.addr)  # the same port: the agents know only this address
        c.wait_nodes(2)
        wait_until(lambda: c.routes("add") == table, timeout=30, what="routing table to converge")
        assert c.get("add").allocations[0].allocation_state == common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED
        assert worker_pids("add", c.root) == pids
        assert {n: e.worker_address for n, e in c.get("add").allocations[0].routing_table.items()} == addresses
        assert c.models.GetModel(models_pb2.GetModelRequest(model_id="add")).state == common_pb2.MODEL_STATE_NORMAL
        np.testing.assert_array_equal(
            np.frombuffer(v2_infer(c.addr, "add", x, token=c.token).raw_output_contents[0], np.float32), x[0] + [1, 2, 3, 4]
        )
    finally:
        c.close()
