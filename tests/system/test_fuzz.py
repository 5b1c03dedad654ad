"""Scenario 24: descriptor-driven fuzzing of every RPC of every service.

A real control plane (auth on; the calls carry the admin key so they reach
the handlers), a scripted agent that reports whatever it is assigned as
STARTED at a real inference worker, so gateway calls travel all the way.
Every method of every service the control plane lists through reflection,
and every method of the worker's services, gets Hypothesis-drawn requests
built from its input descriptor (tests/fuzzing.py), some of them raw bytes.

Passes when: no call ends with INTERNAL, UNKNOWN, DATA_LOSS or UNIMPLEMENTED
(UNAVAILABLE only with a documented reason: no started worker, draining),
health stays SERVING after every method, both processes stay up with no
traceback in their logs, and the store is consistent at the end (records
decode, SQLite integrity_check, every model's blob present and no stray
one, every allocation on a known node, no temp file left).

10,000 examples in all by default (about 1-2 minutes on two cores);
MODELFLEET_FUZZ_EXAMPLES=100000 for a longer run. WorkerControl.Drain is
left out of the random calls (it is a legitimate stop: the worker then
refuses inference by design) and called once at the end instead.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import modelbuild as mb
import pytest
from cluster import Cluster, authed_channel
from fakeagent import FakeAgent
from fuzzing import Vocabulary, infer_request, request_strategy
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rpcs import served_services
from workerproc import start_worker

from modelfleet.v1 import auth_pb2, auth_pb2_grpc, common_pb2, models_pb2, nodes_pb2
from modelfleet.v1 import deployments_pb2 as dpb
from node_agent.worker.server import CONTROL_SERVICE, HEALTH_SERVICE, INFERENCE_SERVICE

TOTAL = int(os.environ.get("MODELFLEET_FUZZ_EXAMPLES", "10000"))
POOL = descriptor_pool.Default()
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED}
UNAVAILABLE_REASONS = ("has no started worker", "worker is draining", "is stopped")
# Triton methods modelfleet answers UNIMPLEMENTED on purpose, naming the modelfleet call to use
UNSERVED = {"RepositoryModelLoad": "StartDeployment", "RepositoryModelUnload": "StopDeployment"}
# Relative weights: the cheap calls get more examples; uploads run a probe process.
WEIGHTS = {"UploadModel": 0.05, "ServerReflectionInfo": 0.3, "Watch": 0.3, "WatchDeployment": 0.3,
           "StartDeployment": 0.5, "Connect": 0.5, "CreateApiKey": 0.5, "UpdateDeployment": 0.6}  # fmt: skip
SKIP = {"/modelfleet.v1.WorkerControl/Drain"}
OUTCOMES: collections.Counter[str] = collections.Counter()
TIMES: dict[str, float] = {}


def _methods(services: list[str], target: str) -> list[tuple[str, Any, Any]]:
    return [
        (target, service, method)
        for name in services
        for service in [POOL.FindServiceByName(name)]
        for method in service.methods
        if f"/{service.full_name}/{method.name}" not in SKIP
    ]


def _budget(methods: list[tuple[str, Any, Any]]) -> dict[str, int]:
    weights = {f"{t}/{m.full_name}": WEIGHTS.get(m.name, 1.0) for t, _, m in methods}
    scale = TOTAL / sum(weights.values())
    budget = {key: max(5, int(w * scale)) for key, w in weights.items()}
    first = next(iter(budget))
    budget[first] += TOTAL - sum(budget.values())  # exactly TOTAL in all
    return budget


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fuzz")
    c = Cluster(root, heartbeat=1.0, node_timeout=10)
    agent: FakeAgent | None = None
    worker = None
    try:
        c.start_control_plane()
        model = mb.onnx_add(root / "add.onnx")
        assert c.upload(model, "add").state == common_pb2.MODEL_STATE_NORMAL
        worker = start_worker(model=model, fmt="onnx", name="add", version="add-v1", workdir=root / "worker")
        agent = FakeAgent(c.addr, c.create_key("agent", name="fuzz agent").token, "node-fuzz", cpus=64)
        agent.wait_for("welcome")
        agent.cooperate(worker.address)
        c.deployments.StartDeployment(dpb.StartDeploymentRequest(model_id="add", instances=1), timeout=30)
        victim = c.create_key("viewer", name="victim").api_key.key_id
        vocab = Vocabulary(["add", "add-v1", "node-fuzz", "x", "y", "FP32", "BYTES", victim, "admin", "deployer",
                            "viewer", "inference", "agent", "monitor", "infer", "description", "traffic_limit_qps",
                            "variants", "1", "0"])  # fmt: skip
        yield {"cluster": c, "agent": agent, "worker": worker, "vocab": vocab, "root": root}
    finally:
        if agent is not None:
            agent.close()
        if worker is not None:
            worker.close()
        c.close()


def _call(channel: grpc.Channel, service: Any, method: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    identity = (lambda b: b)  # noqa: E731 - requests are already bytes
    path = f"/{service.full_name}/{method.name}"
    if method.client_streaming and method.server_streaming:
        call = channel.stream_stream(path, request_serializer=identity, response_deserializer=identity)
    elif method.client_streaming:
        call = channel.stream_unary(path, request_serializer=identity, response_deserializer=identity)
    elif method.server_streaming:
        call = channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)
    else:
        call = channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)
    try:
        if method.server_streaming:
            stream = call(iter(request) if method.client_streaming else request, timeout=3)
            for _ in stream:
                stream.cancel()  # the first answer is enough: watches never end by themselves
                break
        else:
            call(iter(request) if method.client_streaming else request, timeout=3)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _healthy(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _all_methods(fuzz_target: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    cp = _methods(served_services(fuzz_target["cluster"].addr), "control-plane")
    worker = _methods([INFERENCE_SERVICE, CONTROL_SERVICE, HEALTH_SERVICE, "grpc.reflection.v1alpha.ServerReflection"], "worker")
    # reads first, the calls that delete things last
    order = {"Delete": 2, "Revoke": 2, "Stop": 1, "Drain": 1}
    return sorted(worker + cp, key=lambda x: next((v for k, v in order.items() if x[2].name.startswith(k)), 0))


def test_scenario_24_fuzz_every_rpc_of_every_service(fuzz_target: dict[str, Any]) -> None:
    c: Cluster = fuzz_target["cluster"]
    worker = fuzz_target["worker"]
    methods = _all_methods(fuzz_target)
    budget = _budget(methods)
    assert sum(budget.values()) == TOTAL
    started = time.monotonic()
    bad: list[str] = []
    with authed_channel(c.addr, c.token) as cp_channel, authed_channel(worker.address, c.token) as worker_channel:
        for target, service, method in methods:
            channel = cp_channel if target == "control-plane" else worker_channel
            key = f"{target}/{method.full_name}"

            strategy = request_strategy(method, fuzz_target["vocab"])
            if method.name == "ModelInfer":  # also requests close to valid ones: deeper into validation
                strategy = st.one_of(strategy, infer_request("add", "x", "y"), infer_request("add", "x", "y"))

            @settings(max_examples=budget[key], deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(strategy)
            def run(request: Any) -> None:
                code, details = _call(channel, service, method, request)  # noqa: B023
                OUTCOMES[code.name] += 1
                if code == grpc.StatusCode.UNIMPLEMENTED and UNSERVED.get(method.name, "\0") in details:  # noqa: B023
                    return
                if code in FORBIDDEN or (code == grpc.StatusCode.UNAVAILABLE and not details.startswith(UNAVAILABLE_REASONS)
                                         and not any(r in details for r in UNAVAILABLE_REASONS)):  # fmt: skip
                    bad.append(f"{key}: {code.name}: {details}")  # noqa: B023

            began = time.monotonic()
            run()
            TIMES[key] = time.monotonic() - began
            assert not bad, bad[:5]
            assert _healthy(c.addr) == "SERVING", f"health after {key}"
            assert c.cp is not None and c.cp.alive() and worker.proc.poll() is None
    elapsed = time.monotonic() - started
    print(f"scenario 24: {sum(OUTCOMES.values())} fuzzed calls over {len(methods)} methods in {elapsed:.0f} s: "
          + ", ".join(f"{k}={v}" for k, v in OUTCOMES.most_common()))
    slowest = sorted(TIMES.items(), key=lambda kv: -kv[1])[:6]
    print("slowest methods: " + ", ".join(f"{k.rsplit('.', 1)[1]} {v:.1f} s ({budget[k]})" for k, v in slowest))
    assert sum(OUTCOMES.values()) >= TOTAL


def test_scenario_24_afterwards_everything_is_consistent(fuzz_target: dict[str, Any]) -> None:
    c: Cluster = fuzz_target["cluster"]
    root: Path = fuzz_target["root"]
    worker = fuzz_target["worker"]
    assert _healthy(c.addr) == "SERVING" and _healthy(worker.address) == "SERVING"
    models = c.models.ListModels(models_pb2.ListModelsRequest()).models
    deployments = c.deployments.ListDeployments(dpb.ListDeploymentsRequest(view=common_pb2.VIEW_FULL)).deployments
    nodes = {n.node_id for n in c.nodes.ListNodes(nodes_pb2.ListNodesRequest()).nodes}
    keys = auth_pb2_grpc.AuthStub(c.channel).ListApiKeys(auth_pb2.ListApiKeysRequest(include_inactive=True)).api_keys
    assert keys and "node-fuzz" in nodes
    for deployment in deployments:
        for allocation in deployment.allocations:
            assert set(allocation.routing_table) <= nodes, deployment.deployment_id
    blobs = root / "cp" / "blobs"
    on_disk = {p.name: p.stat().st_size for p in blobs.iterdir() if p.is_file()}
    assert on_disk == {m.sha256: m.model_bytes for m in models}, "blobs and model records disagree"
    assert not any((blobs / "tmp").iterdir())
    with closing(sqlite3.connect(f"file:{root / 'cp' / 'modelfleet.db'}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert c.cp is not None
    for name, log in (("control plane", c.cp.log()), ("worker", worker.stderr_text())):
        assert "Traceback" not in log and "unexpected error" not in log, f"{name} log:\n{log[-3000:]}"
    # the worker's Drain, left out of the random calls, answers too
    from modelfleet.v1 import worker_pb2, worker_pb2_grpc

    with authed_channel(worker.address, "") as channel:
        drained = worker_pb2_grpc.WorkerControlStub(channel).Drain(worker_pb2.DrainRequest(), timeout=30)
    assert drained.abandoned == 0
    print(f"store after fuzzing: {len(models)} models, {len(deployments)} deployments, {len(nodes)} nodes, "
          f"{len(keys)} keys; integrity ok")
