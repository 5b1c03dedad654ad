"""The Triton protocol to the letter, through real processes: model
versions as Triton clients name them (numbers), ModelConfig, ModelStatistics'
breakdown, RepositoryModelLoad/Unload and ServerMetadata.extensions, at the
gateway and at a worker, with tritonclient (in its own process,
tests/tools/triton_call.py), the CLI and plain stubs.

One control plane with one agent serves the module. The model "add" has two
versions that add different constants, so each answer says which version
served it: v1 answers 2 and v2 answers 11 for an input of ones. The
deployment "scorer" serves v1 at weight 100 and v2 at weight 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cluster import ROOT, Cluster, authed_channel
from modelbuild import onnx_add

from modelfleet.inference import grpc_service_pb2 as v2
from modelfleet.inference import grpc_service_pb2_grpc as v2_grpc
from modelfleet.v1 import deployments_pb2 as dpb

TRITON = ROOT / "tests" / "tools" / "triton_call.py"
ONES = np.ones((1, 4), dtype=np.float32)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("triton")
    c = Cluster(root, heartbeat=0.5, node_timeout=10)
    try:
        c.start_control_plane()
        c.start_agent("node-a", cpus=8)
        c.wait_nodes(1)
        models = root / "models"
        models.mkdir()
        assert c.upload(onnx_add(models / "add1.onnx"), "add").version == 1
        assert c.upload(onnx_add(models / "add2.onnx", constant=[10, 20, 30, 40]), "add").version == 2
        req = dpb.StartDeploymentRequest(
            deployment_id="scorer",
            variants=[
                dpb.VariantSpec(model_id="add", model_version=1, weight=100, model_threads=2),
                dpb.VariantSpec(model_id="add", model_version=2, weight=0, max_batch_size=8, max_queue_delay_us=500),
            ],
            wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED,
        )
        req.timeout.FromSeconds(60)
        c.deployments.StartDeployment(req, timeout=90)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def gw(cluster: Cluster) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with authed_channel(cluster.addr, cluster.token) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


def infer_request(version: str, *, model: str = "scorer") -> v2.ModelInferRequest:
    req = v2.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(ONES.tobytes())
    return req


def first_output(reply: v2.ModelInferResponse) -> float:
    return float(np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)[0])


def triton(*args: str, cwd: Path) -> dict:  # type: ignore[type-arg]
    result = subprocess.run([sys.executable, str(TRITON), *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def worker_address(cluster: Cluster, variant: str) -> str:
    dep = cluster.get("scorer")
    alloc = next(a for a in dep.allocations if a.variant == variant)
    return next(iter(alloc.routing_table.values())).worker_address


# ---- versions ---------------------------------------------------------------------------------
def test_a_version_number_selects_the_variant_serving_that_model_version(
    cluster: Cluster, gw: v2_grpc.GRPCInferenceServiceStub, tmp_path: Path
) -> None:
    assert first_output(gw.ModelInfer(infer_request("2"), timeout=10)) == 11.0  # weight 0, named by number
    assert first_output(gw.ModelInfer(infer_request("1"), timeout=10)) == 2.0
    assert first_output(gw.ModelInfer(infer_request("add-v2"), timeout=10)) == 11.0  # variant names keep working
    with pytest.raises(grpc.RpcError) as err:
        gw.ModelInfer(infer_request("3"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no variant '3' and serves no model version '3'" in (err.value.details() or "")

    meta = gw.ModelMetadata(v2.ModelMetadataRequest(name="scorer"), timeout=10)
    assert list(meta.versions) == ["1", "2"]
    assert gw.ModelReady(v2.ModelReadyRequest(name="scorer", version="2"), timeout=10).ready
    assert not gw.ModelReady(v2.ModelReadyRequest(name="scorer", version="9"), timeout=10).ready

    # tritonclient sends the number, as perf_analyzer does
    np.save(tmp_path / "x.npy", ONES)
    out = triton("infer", "--url", cluster.addr, "--model", "scorer", "--model-version", "2", "--input", f"x={tmp_path / 'x.npy'}",
                 "--out-dir", str(tmp_path), "--token", cluster.token, cwd=tmp_path)  # fmt: skip
    assert "outputs" in out, out
    assert float(np.load(out["outputs"]["y"])[0, 0]) == 11.0

    # and the CLI
    env = {**os.environ, "MODELFLEET_ADDR": cluster.addr, "MODELFLEET_TOKEN": cluster.token}
    cli = subprocess.run([sys.executable, "-m", "modelfleet.cli", "infer", "scorer", "--model-version", "2", "--input", "x=[[1,1,1,1]]"],
                         capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "11.0" in cli.stdout, cli.stdout


def test_a_worker_answers_to_its_model_version_number(cluster: Cluster, tmp_path: Path) -> None:
    address = worker_address(cluster, "add-v2")
    with authed_channel(address, cluster.token) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        assert first_output(stub.ModelInfer(infer_request("2"), timeout=10)) == 11.0
        assert first_output(stub.ModelInfer(infer_request("add-v2"), timeout=10)) == 11.0
        assert list(stub.ModelMetadata(v2.ModelMetadataRequest(name="scorer"), timeout=10).versions) == ["2"]
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request("1"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


# ---- ModelConfig ------------------------------------------------------------------------------
def test_tritonclient_reads_model_config_at_the_gateway_and_a_worker(cluster: Cluster, tmp_path: Path) -> None:
    plain = triton("config", "--url", cluster.addr, "--model", "scorer", "--token", cluster.token, cwd=tmp_path)
    assert "config" in plain, plain
    cfg = plain["config"]
    assert (cfg["name"], cfg["platform"], cfg["backend"]) == ("scorer", "onnxruntime_onnx", "onnxruntime")
    assert cfg.get("max_batch_size", 0) == 0 and "dynamic_batching" not in cfg
    assert [(t["name"], t["data_type"], t["dims"]) for t in cfg["input"]] == [("x", "TYPE_FP32", ["-1", "4"])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in cfg["output"]] == [("y", "TYPE_FP32", ["-1", "4"])]
    assert [(g["name"], g["kind"], g["count"]) for g in cfg["instance_group"]] == [("add-v1", "KIND_CPU", 2)]  # 1 worker x 2 threads

    batched = triton("config", "--url", cluster.addr, "--model", "scorer", "--model-version", "2", "--token", cluster.token, cwd=tmp_path)
    cfg = batched["config"]
    assert cfg["max_batch_size"] == 8 and cfg["dynamic_batching"]["max_queue_delay_microseconds"] == "500"
    assert [t["dims"] for t in cfg["input"]] == [["4"]]  # the batch dimension is left out, as in Triton

    at_worker = triton("config", "--url", worker_address(cluster, "add-v2"), "--model", "scorer", "--token", cluster.token, cwd=tmp_path)
    cfg = at_worker["config"]
    assert (cfg["name"], cfg["platform"], cfg["max_batch_size"]) == ("scorer", "onnxruntime_onnx", 8)
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == "500"
    assert [(g["kind"], g["count"]) for g in cfg["instance_group"]] == [("KIND_CPU", 1)]


# ---- ModelStatistics ----------------------------------------------------------------------------
def _entry(stub: v2_grpc.GRPCInferenceServiceStub, version: str = "") -> dict[str, v2.ModelStatistics]:
    reply = stub.ModelStatistics(v2.ModelStatisticsRequest(name="scorer", version=version), timeout=10)
    return {s.version: s for s in reply.model_stats}


def test_statistics_break_down_queue_and_compute_per_version_summed_at_the_gateway(
    cluster: Cluster, gw: v2_grpc.GRPCInferenceServiceStub
) -> None:
    before = _entry(gw)
    assert set(before) == {"1", "2"}  # one entry per model version number, as Triton has
    for _ in range(6):
        gw.ModelInfer(infer_request("2"), timeout=10)
    after = _entry(gw)
    v2stats, v1stats = after["2"], after["1"]
    assert v2stats.inference_count - before["2"].inference_count == 6
    assert v1stats.inference_count == before["1"].inference_count
    infer = v2stats.inference_stats
    for part in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        got = getattr(infer, part)
        assert got.count - getattr(before["2"].inference_stats, part).count == 6, part
        assert got.ns > 0, part
    assert infer.success.ns >= infer.compute_infer.ns  # the whole call holds its parts
    assert v2stats.execution_count >= 1 and sum(b.compute_infer.count for b in v2stats.batch_stats) == v2stats.execution_count
    assert v2stats.last_inference > 0

    # the worker's own entry is what the gateway summed (one worker serves v2)
    with authed_channel(worker_address(cluster, "add-v2"), cluster.token) as channel:
        (own,) = v2_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(v2.ModelStatisticsRequest(name="scorer"), timeout=10).model_stats
    assert own.version == "2" and own.inference_stats.success.count == infer.success.count
    assert list(_entry(gw, "add-v2")) == ["2"] and list(_entry(gw, "2")) == ["2"]


# ---- a stopped deployment -----------------------------------------------------------------------
def test_a_stopped_deployment_answers_unavailable_before_the_request_is_validated(
    cluster: Cluster, gw: v2_grpc.GRPCInferenceServiceStub
) -> None:
    req = dpb.StartDeploymentRequest(model_id="add", model_version=1, deployment_id="stopper")
    req.timeout.FromSeconds(60)
    cluster.deployments.StartDeployment(req, timeout=90)
    malformed = infer_request("", model="stopper")
    malformed.inputs[0].shape[:] = [1, 3]  # the model takes 4 columns
    with pytest.raises(grpc.RpcError) as err:
        gw.ModelInfer(malformed, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # while it runs
    stop = dpb.StopDeploymentRequest(deployment_id="stopper", wait=True)
    stop.timeout.FromSeconds(30)
    cluster.deployments.StopDeployment(stop, timeout=40)
    for request in (malformed, infer_request("", model="stopper"), infer_request("7", model="stopper")):
        with pytest.raises(grpc.RpcError) as err:
            gw.ModelInfer(request, timeout=10)
        assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAVAILABLE, "deployment 'stopper' is stopped")
    # the stream answers the same, and goes on
    answers = list(gw.ModelStreamInfer(iter([malformed, infer_request("", model="scorer")]), timeout=30))
    assert sorted(a.error_message for a in answers) == ["", "deployment 'stopper' is stopped"]


# ---- repository control and extensions ----------------------------------------------------------
@pytest.mark.parametrize("target", ["gateway", "worker"])
def test_load_and_unload_name_the_modelfleet_call_and_extensions_list_what_is_served(cluster: Cluster, target: str) -> None:
    address = cluster.addr if target == "gateway" else worker_address(cluster, "add-v1")
    with authed_channel(address, cluster.token) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name="scorer"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "modelfleet.v1.Deployments/StartDeployment" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelUnload(v2.RepositoryModelUnloadRequest(model_name="scorer"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "modelfleet.v1.Deployments/StopDeployment" in (err.value.details() or "")
        assert cluster.get("scorer").allocations[0].routing_table  # nothing was unloaded

        extensions = list(stub.ServerMetadata(v2.ServerMetadataRequest(), timeout=10).extensions)
        assert extensions == ["model_configuration", "statistics"]  # not model_repository: no load/unload
        assert stub.ModelConfig(v2.ModelConfigRequest(name="scorer"), timeout=10).config.name == "scorer"
        assert stub.ModelStatistics(v2.ModelStatisticsRequest(name="scorer"), timeout=10).model_stats
