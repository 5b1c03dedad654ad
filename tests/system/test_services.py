"""Real-time services through real processes: variants with traffic
weights, the gated launch from v1 to v2 under load, the traffic limit,
auto stop with a clock the test moves, the per-user quota, resources and
pools, GPUs and env reaching the worker, dry runs, statuses and events.

One control plane with two agents serves the module: node-a (pool=blue) and
node-b (pool=green, 2 GPUs advertised; there are none, so onnxruntime keeps
to its CPU provider). The model "add" has two versions that add different
constants, so every answer says which version served it: v1 answers 2 and
v2 answers 11 for an input of ones. Load comes from tests/tools/loadgen.py
in its own process. Each test stops what it started so that the next one
finds the fleet empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cluster import ROOT, Cluster, authed_channel, wait_until, worker_processes
from google.protobuf import field_mask_pb2
from modelbuild import onnx_add, onnx_slow, onnx_warmup_fails

from modelfleet.inference import grpc_service_pb2 as v2
from modelfleet.inference import grpc_service_pb2_grpc as v2_grpc
from modelfleet.v1 import common_pb2, nodes_pb2
from modelfleet.v1 import deployments_pb2 as dpb
from modelfleet.v1 import deployments_pb2_grpc as dpb_grpc

LOADGEN = ROOT / "tests" / "tools" / "loadgen.py"
CLOCK_CP = ROOT / "tests" / "tools" / "clock_control_plane.py"  # a control plane whose clock the test moves
STARTED = common_pb2.ROUTING_STATE_STARTED
V1, V2 = "2", "11"  # first output element for an input of ones
SECRET = "s3cr3t-value-never-logged"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("services")
    # Heavy gateway load (10,000 calls) shares the control plane's loop with the
    # agent streams on 2 shared cores: a 1 s node timeout would lose nodes that
    # are fine. Node loss has its own tests; here a lost node would only skew figures.
    c = Cluster(root, heartbeat=0.5, node_timeout=10)
    c.clock_file = root / "clock-offset"  # type: ignore[attr-defined]
    _ROOT[:] = [str(root.resolve()).encode()]
    try:
        c.start_control_plane(launcher=(str(CLOCK_CP), str(c.clock_file)))  # type: ignore[attr-defined]
        _TOKEN[:] = [c.token]
        c.start_agent("node-a", cpus=16, labels={"pool": "blue"})
        c.start_agent("node-b", cpus=16, labels={"pool": "green"}, gpus=2)
        c.wait_nodes(2)
        models = root / "models"
        models.mkdir()
        assert c.upload(onnx_add(models / "add1.onnx"), "add").version == 1
        assert c.upload(onnx_add(models / "add2.onnx", constant=[10, 20, 30, 40]), "add").version == 2
        yield c
    finally:
        c.close()


@pytest.fixture(autouse=True)
def _clean_fleet(cluster: Cluster) -> Iterator[None]:
    """Every test finds the fleet empty, even after another one failed half-way."""
    yield
    for dep in cluster.deployments.ListDeployments(dpb.ListDeploymentsRequest()).deployments:
        stop(cluster, dep.deployment_id)
    wait_until(lambda: not worker_pids(None), timeout=30, what="every worker to exit")


@pytest.fixture(scope="module")
def nodes(cluster: Cluster) -> dict[str, str]:
    return {"a": cluster.node_id("node-a"), "b": cluster.node_id("node-b")}


# ---- helpers ---------------------------------------------------------------------------
def variant(version: int, weight: int, **fields: object) -> dpb.VariantSpec:
    return dpb.VariantSpec(model_id="add", model_version=version, weight=weight, **fields)  # type: ignore[arg-type]


def start(c: Cluster, deployment_id: str, *, user: str = "", **fields: object) -> dpb.StartDeploymentResponse:
    req = dpb.StartDeploymentRequest(deployment_id=deployment_id, **fields)  # type: ignore[arg-type]
    if not req.variants and not req.model_id:
        req.model_id = "add"
    if not req.HasField("timeout"):
        req.timeout.FromSeconds(60)
    stub = dpb_grpc.DeploymentsStub(c.user_channel(user)) if user else c.deployments  # the owner is the key's user
    return stub.StartDeployment(req, timeout=90)


def update(c: Cluster, deployment_id: str, paths: list[str], *, wait: bool = True, dry_run: bool = False, **spec: object) -> dpb.UpdateDeploymentResponse:
    req = dpb.UpdateDeploymentRequest(
        deployment_id=deployment_id,
        spec=dpb.StartDeploymentRequest(**spec),  # type: ignore[arg-type]
        update_mask=field_mask_pb2.FieldMask(paths=paths),
        dry_run=dry_run,
    )
    if wait:
        req.wait_for = dpb.WAIT_FOR_STARTED
        req.timeout.FromSeconds(60)
    return c.deployments.UpdateDeployment(req, timeout=90)


def stop(c: Cluster, deployment_id: str, *, delete: bool = True) -> None:
    req = dpb.StopDeploymentRequest(deployment_id=deployment_id, wait=True)
    req.timeout.FromSeconds(30)
    c.deployments.StopDeployment(req, timeout=40)
    if delete:
        c.deployments.DeleteDeployment(dpb.DeleteDeploymentRequest(deployment_id=deployment_id))


def events(c: Cluster, deployment_id: str) -> list[dpb.DeploymentEvent]:
    return list(c.deployments.ListDeploymentEvents(dpb.ListDeploymentEventsRequest(deployment_id=deployment_id)).events)


_ROOT: list[bytes] = []  # the module cluster's directory: workers of other clusters (other tests) are not ours
_TOKEN: list[str] = []  # the module cluster's admin key, for the load generator


def worker_pids(deployment_id: str | None) -> dict[int, tuple[str, str]]:
    """Live inference workers of deployment_id (None: any) in this module's cluster:
    pid -> (deployment id, allocation id)."""
    root = Path(_ROOT[0].decode()) if _ROOT else None
    return {pid: w for pid, w in worker_processes(root).items() if deployment_id is None or w[0] == deployment_id}


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if item)


class Load:
    """tests/tools/loadgen.py in its own process."""

    def __init__(self, tmp: Path, addr: str, model: str, *args: str) -> None:
        self.out = tmp / f"load-{model}-{time.monotonic_ns()}.json"
        self.until = tmp / f"until-{time.monotonic_ns()}"
        self.proc = subprocess.Popen(
            [sys.executable, str(LOADGEN), "--addr", addr, "--model", model, "--out", str(self.out),
             "--until-file", str(self.until), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "MODELFLEET_TOKEN": _TOKEN[0] if _TOKEN else ""},  # the cluster's admin key
        )

    def finish(self, timeout: float = 120, *, now: bool = True) -> dict:  # type: ignore[type-arg]
        if now:
            self.until.touch()
        _stdout, stderr = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, stderr
        return json.loads(self.out.read_text())


def loadgen(addr: str, model: str, tmp: Path, *args: str) -> dict:  # type: ignore[type-arg]
    return Load(tmp, addr, model, *args).finish(timeout=300, now=False)


def gateway_stats(c: Cluster, deployment_id: str) -> common_pb2.InferenceStats:
    return c.deployments.GetDeploymentStats(dpb.GetDeploymentStatsRequest(deployment_id=deployment_id)).gateway


# ---- variants ------------------------------------------------------------------------------
def test_weights_split_10000_calls_and_model_version_picks_one_variant(cluster: Cluster, tmp_path: Path) -> None:
    resp = start(
        cluster, "split", variants=[variant(1, 30, instances=1), variant(2, 70)], wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED
    )
    dep = resp.deployment
    assert [(v.name, v.weight) for v in dep.variants] == [("add-v1", 30), ("add-v2", 70)]
    assert [a.variant for a in dep.allocations] == ["add-v1", "add-v2"]
    assert len(dep.allocations[0].routing_table) == 1 and len(dep.allocations[1].routing_table) == 2

    t0 = time.monotonic()
    out = loadgen(cluster.addr, "split", tmp_path, "--count", "10000", "--concurrency", "16")
    took = time.monotonic() - t0
    assert out["errors"] == {} and out["ok"] == 10000, out
    share_v1 = out["outputs"].get(V1, 0) / 100
    share_v2 = out["outputs"].get(V2, 0) / 100
    print(f"weight split over 10000 calls: add-v1 {share_v1:.2f}% (weight 30), add-v2 {share_v2:.2f}% (weight 70); {took:.1f}s")
    assert abs(share_v1 - 30) <= 2 and abs(share_v2 - 70) <= 2

    # a V2 model_version that names a variant goes to that variant only
    pinned = loadgen(cluster.addr, "split", tmp_path, "--count", "300", "--concurrency", "8", "--version", "add-v1")
    assert pinned["outputs"] == {V1: 300}, pinned
    pinned = loadgen(cluster.addr, "split", tmp_path, "--count", "300", "--concurrency", "8", "--version", "add-v2")
    assert pinned["outputs"] == {V2: 300}, pinned

    # within a variant the least-loaded started worker gets the call: both v2 workers served
    def per_worker() -> dict[str, int]:
        stats = cluster.deployments.GetDeploymentStats(dpb.GetDeploymentStatsRequest(deployment_id="split"))
        return {n.node_id: n.stats.inference_count for n in stats.nodes if n.variant == "add-v2"}

    counts = wait_until(lambda: (c := per_worker()) and sum(c.values()) >= out["outputs"][V2] + 300 and c, timeout=15, what="v2 counts")
    total = sum(counts.values())
    print(f"add-v2 calls per worker: {counts}")
    assert all(n >= 0.3 * total for n in counts.values()), counts
    gw = gateway_stats(cluster, "split")
    assert gw.inference_count == 10600 and gw.error_count == gw.rejected_execution_count == 0
    stop(cluster, "split")


def test_weights_must_sum_to_100_and_bad_variants_are_refused(cluster: Cluster) -> None:
    cases = [
        ([variant(1, 60), variant(2, 30)], "sum to 90"),
        ([variant(1, 50), variant(1, 50)], "used twice"),
        ([variant(1, 100), variant(7, 0)], "7"),
    ]
    for variants, words in cases:
        with pytest.raises(grpc.RpcError) as err:
            start(cluster, "badsplit", variants=variants)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), err.value.details()
        assert words in err.value.details()


# ---- gated launch --------------------------------------------------------------------------
def test_gated_launch_v1_to_v2_under_steady_load_fails_no_request(cluster: Cluster, tmp_path: Path) -> None:
    start(cluster, "gl", model_version=1, instances=1)
    v1_alloc = cluster.get("gl").allocations[0]
    (v1_entry,) = v1_alloc.routing_table.values()
    load = Load(tmp_path, cluster.addr, "gl", "--rate", "50", "--concurrency", "32")
    marks: dict[str, float] = {}
    try:
        time.sleep(1.0)  # steady load before the first step (a measured baseline, not a wait for state)
        # 1. v2 joins with weight 0: started before any traffic moves
        marks["v2 added"] = time.monotonic()
        dep = update(cluster, "gl", ["variants"], variants=[variant(1, 100), variant(2, 0, instances=1)]).deployment
        marks["v2 started"] = time.monotonic()
        assert [a.allocation_state for a in dep.allocations][1] == common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED
        assert dep.allocations[0].routing_table[next(iter(v1_alloc.routing_table))].allocation_id == v1_entry.allocation_id
        time.sleep(1.0)
        # 2. 50/50, 3. 0/100
        marks["50/50"] = time.monotonic()
        update(cluster, "gl", ["variants"], variants=[variant(1, 50), variant(2, 50)])
        time.sleep(1.0)
        marks["0/100"] = time.monotonic()
        update(cluster, "gl", ["variants"], variants=[variant(1, 0), variant(2, 100)])
        time.sleep(1.0)
        # 4. v1 removed: it stops only now, drained
        marks["v1 removed"] = time.monotonic()
        dep = update(cluster, "gl", ["variants"], variants=[variant(2, 100)]).deployment
        assert [v.name for v in dep.variants] == ["add-v2"]
        wait_until(lambda: not cluster.get("gl").retiring, timeout=30, what="v1 to be retired")
        wait_until(lambda: len(worker_pids("gl")) == 1, timeout=30, what="v1's worker to exit")
        # 5. a worker setting changes: a new allocation (new id) starts before the old one drains
        old = next(iter(cluster.get("gl").allocations[0].routing_table.values()))
        marks["v2 queue changed"] = time.monotonic()
        dep = update(cluster, "gl", ["queue_capacity", "model_threads"], queue_capacity=64, model_threads=2).deployment
        wait_until(lambda: not cluster.get("gl").rollout, timeout=30, what="the rolling update to finish")
        wait_until(lambda: len(cluster.get("gl").allocations[0].routing_table) == 1, timeout=30, what="the old route to go")
        (new,) = cluster.get("gl").allocations[0].routing_table.values()
        assert new.allocation_id != old.allocation_id and new.routing_state == STARTED
        assert cluster.get("gl").allocations[0].task_parameters.queue_capacity == 64
        wait_until(lambda: len(worker_pids("gl")) == 1, timeout=30, what="the old worker to exit")
        time.sleep(1.0)
    finally:
        result = load.finish()
    failed = sum(result["errors"].values()) + result["skipped"]
    print(
        f"gated launch v1 -> v2 under {result['sent'] / result['elapsed_s']:.0f} calls/s for {result['elapsed_s']:.1f}s: "
        f"{result['ok']} ok, {failed} failed ({result['errors']}), outputs {result['outputs']}, p99 {result['p99_ms']:.1f} ms"
    )
    assert failed == 0, result["errors"]
    assert result["outputs"].get(V1, 0) > 0 and result["outputs"].get(V2, 0) > 0

    def outputs_between(a: str, b: str) -> set[str]:
        return {v for t, v in result["series"] if marks[a] < t < marks[b]}

    assert outputs_between("v2 started", "50/50") == {V1}  # weight 0: v2 runs but gets no traffic
    assert outputs_between("0/100", "v1 removed") - {V1} == {V2}
    assert outputs_between("v1 removed", "v2 queue changed") == {V2}

    # the event log shows make-before-break: each new allocation STARTED before the old one stopped
    log = events(cluster, "gl")
    routing = [e for e in log if e.kind == dpb.EVENT_KIND_ROUTING]

    def seq(allocation_id: str, state: int) -> int:
        return next(e.seq for e in routing if e.allocation_id == allocation_id and e.routing_state == state)

    v2_first = next(e.allocation_id for e in routing if e.variant == "add-v2")
    assert seq(v2_first, STARTED) < seq(v1_entry.allocation_id, common_pb2.ROUTING_STATE_STOPPING)
    assert seq(new.allocation_id, STARTED) < seq(old.allocation_id, common_pb2.ROUTING_STATE_STOPPING)
    stopping = next(e for e in routing if e.allocation_id == old.allocation_id and e.routing_state == common_pb2.ROUTING_STATE_STOPPING)
    assert "rolling update" in stopping.reason
    assert any(e.kind == dpb.EVENT_KIND_SPEC and "updated variants" in e.reason for e in log)
    stop(cluster, "gl")


def test_a_new_variant_that_cannot_load_never_takes_the_old_one_down(cluster: Cluster, tmp_path: Path) -> None:
    assert cluster.upload(onnx_warmup_fails(tmp_path / "wf.onnx"), "wf").state == common_pb2.MODEL_STATE_NORMAL
    start(cluster, "keep", model_version=1, instances=1)
    before = set(worker_pids("keep"))
    # a spec that can never be placed is refused and changes nothing
    with pytest.raises(grpc.RpcError) as err:
        update(cluster, "keep", ["resources"], resources=common_pb2.Resources(cpus=17))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "17 cpus" in err.value.details()
    assert cluster.get("keep").revision == 1
    # v1 replaced by a model whose worker fails to load: v1 keeps serving until it could be replaced
    update(cluster, "keep", ["variants"], wait=False, variants=[dpb.VariantSpec(model_id="wf", weight=100, instances=1)])
    dep = wait_until(
        lambda: (d := cluster.get("keep")).status == common_pb2.DEPLOYMENT_STATUS_CONCERNING and d,
        timeout=60, what="the failed new variant to show",
    )
    assert "failed" in dep.status_reason and "load error" in "".join(e.reason for e in dep.allocations[0].routing_table.values())
    (old,) = dep.retiring
    assert old.variant == "add-v1" and [e.routing_state for e in old.routing_table.values()] == [STARTED]
    assert "keep serving" in dep.rollout
    out = loadgen(cluster.addr, "keep", tmp_path, "--count", "50", "--concurrency", "4")
    assert out["outputs"] == {V1: 50}, out
    assert set(worker_pids("keep")) == before
    stop(cluster, "keep")


# ---- traffic limit -------------------------------------------------------------------------
def test_traffic_limit_accepts_within_10_percent_under_3x_overload(cluster: Cluster, tmp_path: Path) -> None:
    start(cluster, "limited", model_version=1, instances=1, traffic_limit_qps=20)
    out = loadgen(cluster.addr, "limited", tmp_path, "--rate", "60", "--duration", "5", "--concurrency", "64")
    accepted_rate = out["ok"] / out["elapsed_s"]
    rejected = out["errors"].get("RESOURCE_EXHAUSTED", 0)
    error = (accepted_rate - 20) / 20
    print(f"traffic limit 20/s under {out['sent'] / out['elapsed_s']:.1f} calls/s: accepted {accepted_rate:.2f}/s "
          f"({error:+.1%}), {rejected} rejected, pushback {sorted(set(out['pushback_ms']))[:5]} ms")
    assert abs(error) <= 0.10
    assert set(out["errors"]) == {"RESOURCE_EXHAUSTED"} and out["skipped"] == 0
    assert "traffic limit of 20 calls per second" in out["details"]["RESOURCE_EXHAUSTED"]
    assert out["pushback_count"] == rejected and out["missing_pushback"] == 0
    assert all(0 < ms <= 1000 for ms in out["pushback_ms"])
    gw = wait_until(lambda: (g := gateway_stats(cluster, "limited")).rejected_execution_count == rejected and g, timeout=5, what="gateway stats")
    assert gw.inference_count == out["ok"]
    # the limit can be lifted by an update
    update(cluster, "limited", ["traffic_limit_qps"], traffic_limit_qps=0, wait=False)
    out = loadgen(cluster.addr, "limited", tmp_path, "--rate", "60", "--duration", "1", "--concurrency", "64")
    assert out["errors"] == {}
    stop(cluster, "limited")


def _pending(c: Cluster, deployment_id: str) -> int:
    stats = c.deployments.GetDeploymentStats(dpb.GetDeploymentStatsRequest(deployment_id=deployment_id))
    return stats.total.number_of_pending_requests


def test_gateway_counts_timed_out_and_cancelled_calls_separately(cluster: Cluster, tmp_path: Path) -> None:
    assert cluster.upload(onnx_slow(tmp_path / "slow.onnx", matmuls=64), "slow").state == common_pb2.MODEL_STATE_NORMAL
    start(cluster, "slow", model_id="slow", instances=1, model_threads=1)
    x = np.ones(4, np.float32)
    with authed_channel(cluster.addr, cluster.token) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        req = v2.ModelInferRequest(model_name="slow")
        req.inputs.add(name="x", datatype="FP32", shape=[4])
        req.raw_input_contents.append(x.tobytes())
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req, timeout=0.05)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        future = stub.ModelInfer.future(req, timeout=30)
        wait_until(lambda: gateway_stats(cluster, "slow").timeout_count == 1, timeout=10, what="the timeout counted")
        wait_until(lambda: _pending(cluster, "slow") >= 1, timeout=10, what="the call to reach the worker")
        future.cancel()
        wait_until(lambda: gateway_stats(cluster, "slow").cancelled_count == 1, timeout=10, what="the cancel counted")
        assert stub.ModelInfer(req, timeout=30).raw_output_contents
    gw = gateway_stats(cluster, "slow")
    assert (gw.timeout_count, gw.cancelled_count, gw.inference_count, gw.rejected_execution_count, gw.error_count) == (1, 1, 1, 0, 0)
    stop(cluster, "slow")


# ---- auto stop -----------------------------------------------------------------------------
def test_auto_stop_with_a_moved_clock_then_restart(cluster: Cluster) -> None:
    clock: Path = cluster.clock_file  # type: ignore[attr-defined]
    for bad in (5400, 25 * 3600, 0):
        req = dpb.StartDeploymentRequest(model_id="add", deployment_id="bad-auto")
        req.auto_stop.FromSeconds(bad)
        with pytest.raises(grpc.RpcError) as err:
            cluster.deployments.StartDeployment(req, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "auto_stop" in err.value.details()
    req = dpb.StartDeploymentRequest(model_id="add", model_version=1, deployment_id="auto", instances=1)
    req.auto_stop.FromSeconds(2 * 3600)
    req.timeout.FromSeconds(60)
    dep = cluster.deployments.StartDeployment(req, timeout=90).deployment
    assert dep.auto_stop_at.seconds == dep.start_time.seconds + 7200
    listed = {d.deployment_id: d for d in cluster.deployments.ListDeployments(dpb.ListDeploymentsRequest()).deployments}
    assert listed["auto"].auto_stop_at == dep.auto_stop_at
    assert worker_pids("auto")
    try:
        clock.write_text("7201")
        wait_until(lambda: cluster.get("auto").status == common_pb2.DEPLOYMENT_STATUS_STOPPED, timeout=30, what="auto stop")
        stopped = cluster.get("auto")
        assert stopped.status_reason == "auto stop"
        wait_until(lambda: not worker_pids("auto"), timeout=30, what="the auto-stopped worker to exit")
        assert any(e.kind == dpb.EVENT_KIND_SPEC and e.reason.startswith("auto stop") for e in events(cluster, "auto"))
        # a stopped deployment starts again with its saved spec; auto stop counts from the new start
        restart = dpb.StartDeploymentRequest(deployment_id="auto")
        restart.timeout.FromSeconds(60)
        again = cluster.deployments.StartDeployment(restart, timeout=90).deployment
        assert again.status in (common_pb2.DEPLOYMENT_STATUS_RUNNING, common_pb2.DEPLOYMENT_STATUS_DEPLOYING)
        assert again.start_time.seconds >= dep.start_time.seconds + 7200
        assert again.auto_stop_at.seconds == again.start_time.seconds + 7200
        assert again.variants[0].instances == 1 and again.revision == stopped.revision + 1
        assert len(worker_pids("auto")) == 1
    finally:
        clock.unlink(missing_ok=True)
    stop(cluster, "auto")


# ---- quota and waiting for capacity ---------------------------------------------------------------------
def test_quota_of_20_per_user_and_waiting_for_capacity(cluster: Cluster, nodes: dict[str, str]) -> None:
    cluster.nodes.DrainNode(nodes_pb2.DrainNodeRequest(node_id=nodes["a"]))  # pool blue: no room now, but some later
    names = [f"q-{i:02d}" for i in range(1, 21)]
    try:
        for name in names:
            dep = start(cluster, name, user="carol", model_version=1, instances=1,
                        resources=common_pb2.Resources(pool="blue"), wait_for=dpb.WAIT_FOR_STARTING).deployment
            assert dep.owner == "carol"
        waiting = cluster.get("q-20")
        assert waiting.status == common_pb2.DEPLOYMENT_STATUS_DEPLOYING
        assert "waiting for capacity" in waiting.status_reason and "cordoned" in waiting.status_reason
        assert waiting.allocations[0].allocation_state == common_pb2.ALLOCATION_STATE_STARTING
        assert not waiting.allocations[0].routing_table
        with pytest.raises(grpc.RpcError) as err:
            start(cluster, "q-21", user="carol", model_version=1, resources=common_pb2.Resources(pool="blue"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "quota" in err.value.details() and "20" in err.value.details() and "carol" in err.value.details()
        # another user is not affected (a dry run creates nothing)
        assert start(cluster, "q-21", user="dave", model_version=1, dry_run=True).dry_run
        for name in names[:-1]:
            stop(cluster, name)
        # capacity appears: the waiting deployment starts
        cluster.nodes.UncordonNode(nodes_pb2.UncordonNodeRequest(node_id=nodes["a"]))
        wait_until(lambda: cluster.get("q-20").status == common_pb2.DEPLOYMENT_STATUS_RUNNING, timeout=60, what="q-20 to start")
        assert list(cluster.get("q-20").allocations[0].routing_table) == [nodes["a"]]
    finally:
        cluster.nodes.UncordonNode(nodes_pb2.UncordonNodeRequest(node_id=nodes["a"]))
        for name in names:
            try:
                stop(cluster, name)
            except grpc.RpcError:
                pass


# ---- resources, pools, GPUs, env -------------------------------------------------------------
def test_pools_and_never_fits_and_fits_later(cluster: Cluster, nodes: dict[str, str]) -> None:
    dep = start(cluster, "green", model_version=1, resources=common_pb2.Resources(pool="green")).deployment
    alloc = dep.allocations[0]
    assert list(alloc.routing_table) == [nodes["b"]]
    assert [(r.reason, r.count, list(r.example_nodes)) for r in alloc.not_chosen_summary] == [
        ("pool 'green' does not match the node's pool 'blue'", 1, [nodes["a"]])
    ]
    for resources, words in [
        (common_pb2.Resources(pool="red"), "no node in pool 'red'"),
        (common_pb2.Resources(cpus=64), "no node can fit 64 cpus (largest has 16)"),
        (common_pb2.Resources(gpus=3), "no node can fit 3 gpus (largest has 2)"),
        (common_pb2.Resources(gpus=1, pool="blue"), "no node in pool 'blue' can fit 1 gpu (largest has 0)"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            start(cluster, "never", model_version=1, resources=resources)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert words in err.value.details(), err.value.details()
    # fits only after another leaves: waits in STARTING with the reason, then starts
    start(cluster, "hog", model_version=1, resources=common_pb2.Resources(pool="green", cpus=12))
    later = start(cluster, "later", model_version=1, resources=common_pb2.Resources(pool="green", cpus=6),
                  wait_for=dpb.WAIT_FOR_STARTING).deployment
    assert later.status == common_pb2.DEPLOYMENT_STATUS_DEPLOYING
    assert "waiting for capacity" in later.status_reason and "needs 6 cpus, 3 of 16 free" in later.status_reason
    assert later.allocations[0].allocation_state == common_pb2.ALLOCATION_STATE_STARTING
    stop(cluster, "hog")
    wait_until(lambda: cluster.routes("later").get(nodes["b"]) == STARTED, timeout=60, what="later to start")
    stop(cluster, "later")
    stop(cluster, "green")


def test_gpus_and_env_reach_the_worker_and_env_values_are_never_logged(cluster: Cluster, nodes: dict[str, str]) -> None:
    start(cluster, "gpu-1", model_version=1, resources=common_pb2.Resources(gpus=1), env={"GREETING": SECRET, "MODE": "x=y"})
    start(cluster, "gpu-2", model_version=1, resources=common_pb2.Resources(gpus=1))
    start(cluster, "cpu-only", model_version=1, resources=common_pb2.Resources(pool="green"))
    try:
        assert list(cluster.routes("gpu-1")) == [nodes["b"]]
        ((pid1, _),) = worker_pids("gpu-1").items()
        ((pid2, _),) = worker_pids("gpu-2").items()
        ((pid3, _),) = worker_pids("cpu-only").items()
        env1, env2, env3 = environ(pid1), environ(pid2), environ(pid3)
        assert env1["GREETING"] == SECRET and env1["MODE"] == "x=y"
        assert {env1["CUDA_VISIBLE_DEVICES"], env2["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}
        assert env3["CUDA_VISIBLE_DEVICES"] == "" and "GREETING" not in env3
        # a third GPU deployment fits by total capacity but not now: it waits
        third = start(cluster, "gpu-3", model_version=1, resources=common_pb2.Resources(gpus=1), wait_for=dpb.WAIT_FOR_STARTING).deployment
        assert "needs 1 gpu, 0 of 2 free" in third.status_reason
        stop(cluster, "gpu-3")
        for proc in [cluster.cp, *cluster.agents.values()]:
            assert proc is not None and SECRET not in proc.log()
        for log in (cluster.root / "node-b" / "workers").glob("*.log"):
            assert SECRET not in log.read_text(errors="replace")
        # names and values are validated; errors never echo a value
        for env, words in [({"": "v"}, "empty name"), ({"A=B": "v"}, "no '='"), ({"1X": "v"}, "invalid"),
                           ({"CUDA_VISIBLE_DEVICES": "3"}, "set by modelfleet"), ({"OK": "a\0b"}, "NUL")]:
            with pytest.raises(grpc.RpcError) as err:
                start(cluster, "badenv", model_version=1, env=env)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "env" in err.value.details()
            assert words in err.value.details()
    finally:
        for name in ("gpu-1", "gpu-2", "cpu-only"):
            stop(cluster, name)


# ---- dry runs ------------------------------------------------------------------------------
def test_dry_run_start_and_update_return_the_plan_and_change_nothing(cluster: Cluster, nodes: dict[str, str]) -> None:
    resp = start(cluster, "plan", variants=[variant(1, 60, instances=1), variant(2, 40, resources=common_pb2.Resources(pool="green"))], dry_run=True)
    assert resp.dry_run
    v1, v2 = resp.deployment.allocations
    assert [e.reason for e in v1.routing_table.values()] == ["would start here"]
    assert list(v2.routing_table) == [nodes["b"]] and v2.routing_table[nodes["b"]].routing_state == common_pb2.ROUTING_STATE_STARTING
    assert [(r.reason, list(r.example_nodes)) for r in v2.not_chosen_summary] == [
        ("pool 'green' does not match the node's pool 'blue'", [nodes["a"]])
    ]
    assert "dry run" in resp.deployment.status_reason
    with pytest.raises(grpc.RpcError) as err:
        cluster.get("plan")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not worker_pids("plan")

    start(cluster, "plan", model_version=1, instances=1)
    before = cluster.get("plan")
    pids = set(worker_pids("plan"))
    plan = update(cluster, "plan", ["variants"], wait=False, dry_run=True,
                  variants=[variant(2, 100, instances=1, resources=common_pb2.Resources(pool="green"))])
    assert plan.dry_run
    (alloc,) = plan.deployment.allocations
    assert alloc.variant == "add-v2" and [e.reason for e in alloc.routing_table.values()] == ["would start here"]
    assert alloc.not_chosen_summary[0].reason.startswith("pool 'green'") and list(alloc.not_chosen_summary[0].example_nodes) == [nodes["a"]]
    (retiring,) = plan.deployment.retiring
    assert retiring.variant == "add-v1"
    assert all(e.reason.startswith("would stop") for e in retiring.routing_table.values())
    assert "keep serving" in plan.deployment.rollout
    plan = update(cluster, "plan", ["model_threads"], wait=False, dry_run=True, model_threads=2)
    table = plan.deployment.allocations[0].routing_table
    assert any(e.allocation_id == "(new)" for e in table.values()) or "rolling update" in plan.deployment.rollout
    after = cluster.get("plan")
    assert after.revision == before.revision and after.variants == before.variants
    assert after.allocations[0].routing_table == before.allocations[0].routing_table
    assert set(worker_pids("plan")) == pids
    assert not [e for e in events(cluster, "plan") if e.kind == dpb.EVENT_KIND_SPEC and "updated" in e.reason]
    stop(cluster, "plan")


# ---- statuses and events, the CLI -----------------------------------------------------------------
def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELFLEET_ADDR": cluster.addr, "MODELFLEET_TOKEN": cluster.token}
    return subprocess.run([sys.executable, "-m", "modelfleet.cli", *args], capture_output=True, text=True, timeout=120, env=env)


def test_cli_gated_launch_events_and_status_transitions(cluster: Cluster, nodes: dict[str, str]) -> None:
    out = _cli(cluster, "deployments", "start", "--variant", "add:1=60", "--variant", "add:2=40", "--deployment-id", "cli",
               "--auto-stop", "2h", "--traffic-limit", "100", "--env", "K=V", "--cpus", "1", "--pool", "blue",
               "--instances", "1", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "DRY RUN" in out.stdout and "would start here" in out.stdout and "pool 'blue' does not match" in out.stdout
    out = _cli(cluster, "deployments", "start", "add", "--model-version", "1", "--deployment-id", "cli", "--instances", "1",
               "--auto-stop", "2h", "--traffic-limit", "100", "--env", "K=V", "--pool", "blue")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["allocation"]["allocation_state"] == "fully_allocated"
    out = _cli(cluster, "deployments", "update", "cli", "--variant", "add:1=50", "--variant", "add:2=50",
               "--wait-for", "started", "--timeout", "1m")
    assert out.returncode == 0, out.stderr
    assert "add-v2" in out.stdout and "50%" in out.stdout
    out = _cli(cluster, "deployments", "get", "cli")
    assert "auto_stop_at" in out.stdout and "100 qps" in out.stdout and "pool=blue" in out.stdout
    out = _cli(cluster, "--json", "deployments", "get", "cli")
    assert json.loads(out.stdout)["variants"][1]["weight"] == 50
    stop(cluster, "cli", delete=False)
    out = _cli(cluster, "deployments", "start", "--deployment-id", "cli", "--wait-for", "fully_allocated")
    assert out.returncode == 0, out.stderr
    out = _cli(cluster, "deployments", "events", "cli")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for words in ("status deploying -> running", "status running -> deploying", "status running -> stopping",
                  "status stopping -> stopped", "status stopped -> deploying", "starting -> started",
                  "started -> stopping", "stopped by user", "restarted by"):
        assert words in text, (words, text)
    print(text)
    statuses = [(e.from_status, e.status) for e in events(cluster, "cli") if e.kind == dpb.EVENT_KIND_STATUS]
    s = common_pb2
    assert statuses[:2] == [(s.DEPLOYMENT_STATUS_UNSPECIFIED, s.DEPLOYMENT_STATUS_DEPLOYING),
                            (s.DEPLOYMENT_STATUS_DEPLOYING, s.DEPLOYMENT_STATUS_RUNNING)]
    # WatchDeployment streams the events as they happen
    stream = cluster.deployments.WatchDeployment(dpb.WatchDeploymentRequest(deployment_id="cli"), timeout=60)
    next(stream)
    cluster.deployments.StopDeployment(dpb.StopDeploymentRequest(deployment_id="cli"))
    seen: list[dpb.DeploymentEvent] = []
    for snapshot in stream:
        seen += snapshot.events
        if snapshot.deployment.status == common_pb2.DEPLOYMENT_STATUS_STOPPED:
            break
    stream.cancel()
    kinds = {(e.kind, e.status) for e in seen}
    assert (dpb.EVENT_KIND_STATUS, common_pb2.DEPLOYMENT_STATUS_STOPPED) in kinds
    assert any(e.kind == dpb.EVENT_KIND_SPEC and e.reason == "stopped by user" for e in seen)
    stop(cluster, "cli")
