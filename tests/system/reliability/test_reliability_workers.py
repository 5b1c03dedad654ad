"""Reliability scenarios of one inference worker, through the whole stack
(real control plane, agent and worker processes on 127.0.0.1, port 0):

- a crashed worker is restarted 3 times with backoff, then FAILED with its
  exit status and last stderr lines (RELIABILITY.md anchors: ES restarts a
  crashed inference process up to 3 times);
- scenario 2, worker side: SIGTERM on a worker drains it: STOPPING, new
  calls UNAVAILABLE, queued calls finish, STOPPED, then (still wanted) it is
  started again;
- scenario 11: a corrupt ONNX / TorchScript file is FAILED with the loader's
  error and never retried, and the other deployment on the node is untouched;
- scenario 16: a call whose deadline passes while queued is never run, gets
  DEADLINE_EXCEEDED through the gateway and frees its queue slot;
- a worker whose agent died before recording it is killed by the next agent
  (never two workers for one allocation; found by the chaos soak).

Shrunk timings: heartbeat 0.2 s, node timeout 1 s, drain timeout 2 s,
restart backoff 0.2/0.4/0.8 s. Each figure is printed and collected
(tests/figures.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cluster import Cluster, wait_until, worker_processes
from faults import Watcher, call, worker_stats
from figures import record
from modelbuild import corrupt_file, onnx_add, onnx_slow, onnx_warmup_fails, torchscript_add

from modelfleet.v1 import common_pb2
from modelfleet.v1 import deployments_pb2 as dpb
from node_agent.allocations import Allocations
from node_agent.procs import cmdline
from node_agent.supervisor import SupervisorConfig

S = common_pb2
DRAIN_S = 2.0
AGENT_ARGS = ["--restart-backoff", "0.2,0.4,0.8", "--drain-timeout", str(DRAIN_S)]


def start(c: Cluster, model_id: str, **fields: object) -> dpb.StartDeploymentResponse:
    req = dpb.StartDeploymentRequest(model_id=model_id, **fields)  # type: ignore[arg-type]
    req.timeout.FromSeconds(60)
    return c.deployments.StartDeployment(req, timeout=90)


def stop(c: Cluster, deployment_id: str) -> None:
    req = dpb.StopDeploymentRequest(deployment_id=deployment_id, wait=True)
    req.timeout.FromSeconds(30)
    c.deployments.StopDeployment(req, timeout=40)
    wait_until(lambda: not pids_of(c, deployment_id), timeout=30, what=f"{deployment_id}'s workers to exit")


def pids_of(c: Cluster, deployment_id: str) -> set[int]:
    return {pid for pid, (name, _) in worker_processes(c.root).items() if name == deployment_id}


def entry(c: Cluster, deployment_id: str) -> dpb.RoutingEntry:
    (only,) = c.get(deployment_id).allocations[0].routing_table.values()
    return only


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("workers"))
    try:
        c.start_control_plane()
        c.start_agent("node-a", cpus=16, extra_args=AGENT_ARGS)
        c.wait_nodes(1)
        d = c.root / "models"
        d.mkdir()
        assert c.upload(onnx_add(d / "add.onnx"), "add").state == S.MODEL_STATE_NORMAL
        assert c.upload(onnx_slow(d / "slow.onnx", matmuls=16), "slow").state == S.MODEL_STATE_NORMAL
        assert c.upload(onnx_slow(d / "slower.onnx", matmuls=96), "slower").state == S.MODEL_STATE_NORMAL
        yield c
    finally:
        orphans = c.close()
        assert not orphans, f"workers left behind: {orphans}"


def test_crashed_worker_restarts_three_times_then_fails_with_exit_status_and_stderr(cluster: Cluster) -> None:
    start(cluster, "add", deployment_id="crashy", instances=1)
    node = cluster.node_id("node-a")
    watcher = Watcher(cluster, "crashy")
    try:
        recovered: list[float] = []
        for crash in range(1, 5):
            (pid,) = pids_of(cluster, "crashy")
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            if crash <= 3:
                seen = wait_until(lambda: watcher.first(node, S.ROUTING_STATE_STARTING, after=killed), timeout=10,
                                  what=f"STARTING after crash {crash}")  # fmt: skip
                # each transition is reported (RESTARTING "... (restart n of 3 in t s)", then STARTING);
                # under load one report may carry both, so the crash itself is what must show
                assert "worker killed by signal SIGKILL" in seen[1], seen
                back = wait_until(lambda: watcher.first(node, S.ROUTING_STATE_STARTED, after=seen[0]), timeout=60,
                                  what=f"STARTED after restart {crash}")  # fmt: skip
                recovered.append(back[0] - killed)
                assert len(pids_of(cluster, "crashy") - {pid}) == 1
            else:
                wait_until(lambda: entry(cluster, "crashy").routing_state == S.ROUTING_STATE_FAILED, timeout=30,
                           what="FAILED after the 4th crash")  # fmt: skip
                failed_after = time.monotonic() - killed
        reason = entry(cluster, "crashy").reason
        assert reason.startswith("worker killed by signal SIGKILL (gave up after 3 restarts); stderr: "), reason
        assert "serving crashy" in reason  # the worker's own last log lines
        assert not pids_of(cluster, "crashy")
        assert cluster.get("crashy").status == S.DEPLOYMENT_STATUS_ABNORMAL
        # FAILED stays FAILED: nothing starts again (well past the longest backoff)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # pacing an observation window, not waiting for a state
            assert not pids_of(cluster, "crashy")
            time.sleep(0.1)
        assert entry(cluster, "crashy").routing_state == S.ROUTING_STATE_FAILED
    finally:
        watcher.close()
    record("crash", "kill -9 -> STARTED again (restarts 1-3)", ", ".join(f"{t:.2f}" for t in recovered), "s",
           "backoff 0.2/0.4/0.8 s + worker start")  # fmt: skip
    record("crash", "4th kill -9 -> FAILED with exit status and stderr", failed_after, "s")
    stop(cluster, "crashy")


def test_worker_sigterm_drains_then_stops_and_is_started_again(cluster: Cluster) -> None:
    """Scenario 2 on a worker: STOPPING, new calls UNAVAILABLE, queued calls finish within D, STOPPED."""
    start(cluster, "slow", deployment_id="drainy", instances=1, queue_capacity=16)
    node = cluster.node_id("node-a")
    first = entry(cluster, "drainy")
    x = np.ones(4, np.float32)
    began = time.monotonic()
    assert call(first.worker_address, "drainy", x, token=cluster.token, timeout=30) == "OK"
    one = time.monotonic() - began
    queued = max(2, min(6, int(0.8 / one)))  # about 0.8 s of work: well within D = 2 s
    (pid,) = pids_of(cluster, "drainy")
    watcher = Watcher(cluster, "drainy")
    try:
        with concurrent.futures.ThreadPoolExecutor(queued) as pool:
            calls = [pool.submit(call, first.worker_address, "drainy", x, token=cluster.token, timeout=30) for _ in range(queued)]
            wait_until(lambda: worker_stats(cluster, first).number_of_pending_requests >= queued, timeout=10,
                       what="the calls to be queued")  # fmt: skip
            term = time.monotonic()
            os.kill(pid, signal.SIGTERM)
            stopping = wait_until(lambda: watcher.first(node, S.ROUTING_STATE_STOPPING, after=term), timeout=10,
                                  what="route STOPPING")  # fmt: skip
            assert "worker is draining" in stopping[1], stopping
            refused_gateway = call(cluster.addr, "drainy", x, token=cluster.token, timeout=10)
            refused_direct = call(first.worker_address, "drainy", x, token=cluster.token, timeout=10)
            results = [f.result(timeout=30) for f in calls]
            finished = time.monotonic()
        stopped = wait_until(lambda: watcher.first(node, S.ROUTING_STATE_STOPPED, after=term), timeout=30,
                             what="route STOPPED")  # fmt: skip
        assert "worker stopped outside the agent (exited with code 0)" in stopped[1], stopped
        assert refused_gateway.startswith("UNAVAILABLE"), refused_gateway
        assert refused_direct.startswith("UNAVAILABLE"), refused_direct
        assert results == ["OK"] * queued, results
        assert finished - term < DRAIN_S + 1.0
        # still wanted: the agent starts it again (a fresh worker)
        wait_until(lambda: entry(cluster, "drainy").routing_state == S.ROUTING_STATE_STARTED
                   and pids_of(cluster, "drainy") - {pid}, timeout=60, what="the worker to be started again")  # fmt: skip
        assert pid not in pids_of(cluster, "drainy") and len(pids_of(cluster, "drainy")) == 1
        assert call(cluster.addr, "drainy", x, token=cluster.token, timeout=30) == "OK"
        back = time.monotonic() - term
    finally:
        watcher.close()
    record("S2", "worker SIGTERM -> route STOPPING", stopping[0] - term, "s")
    record("S2", "worker SIGTERM: queued calls finished / errors", f"{results.count('OK')}/{queued - results.count('OK')}",
           note=f"last done {finished - term:.2f} s after SIGTERM, D = {DRAIN_S:g} s")  # fmt: skip
    record("S2", "worker SIGTERM -> route STOPPED", stopped[0] - term, "s")
    record("S2", "worker SIGTERM -> started again", back, "s")
    stop(cluster, "drainy")


def test_corrupt_model_files_fail_with_the_loader_error_and_are_not_retried(cluster: Cluster, tmp_path: Path) -> None:
    """Scenario 11."""
    start(cluster, "add", deployment_id="bystander", instances=1)
    (bystander,) = pids_of(cluster, "bystander")
    x = np.ones((1, 4), np.float32)
    # a corrupt file never becomes deployable: the registry's probe runs the same loader
    for path, fmt, model_id in ((corrupt_file(tmp_path / "bad.onnx"), S.MODEL_FORMAT_ONNX, "bad-onnx"),
                                (corrupt_file(tmp_path / "bad.pt"), S.MODEL_FORMAT_TORCHSCRIPT, "bad-ts")):  # fmt: skip
        model = cluster.upload(path, model_id, fmt=fmt)
        assert model.state == S.MODEL_STATE_INVALID and model.state_reason, model
        with pytest.raises(grpc.RpcError) as err:
            start(cluster, model_id)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # files that pass the probe but fail in the worker: a model whose warm-up fails, and a
    # TorchScript file corrupted in the node's model cache after it was verified
    assert cluster.upload(onnx_warmup_fails(tmp_path / "wf.onnx"), "warmup-fails").state == S.MODEL_STATE_NORMAL
    ts = cluster.upload(torchscript_add(tmp_path / "add.pt"), "ts-add", fmt=S.MODEL_FORMAT_TORCHSCRIPT)
    cache = cluster.root / "node-a" / "models"
    cache.mkdir(parents=True, exist_ok=True)
    corrupt_file(cache / ts.sha256, size=2048)
    timings = {}
    for model_id in ("warmup-fails", "ts-add"):
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            start(cluster, model_id, instances=1)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        timings[model_id] = time.monotonic() - began
        failed = entry(cluster, model_id)
        assert failed.routing_state == S.ROUTING_STATE_FAILED and failed.reason.startswith("load error: "), failed
        assert cluster.get(model_id).status == S.DEPLOYMENT_STATUS_FAILED
    for model_id in timings:  # the loader's own message follows "load error: "
        assert len(entry(cluster, model_id).reason) > len("load error: ") + 10, entry(cluster, model_id).reason
    # no retry loop: one start each, well past the longest restart backoff
    logs = {m: cluster.root / "node-a" / "workers" / f"{entry(cluster, m).allocation_id}.log" for m in timings}
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # an observation window
        assert not pids_of(cluster, "warmup-fails") and not pids_of(cluster, "ts-add")
        time.sleep(0.1)
    starts = {m: p.read_text().count("--- modelfleet-agent: start") for m, p in logs.items()}
    assert starts == {"warmup-fails": 1, "ts-add": 1}, starts
    # the other deployment on the node is untouched
    assert pids_of(cluster, "bystander") == {bystander}
    assert call(cluster.addr, "bystander", x, token=cluster.token, timeout=10) == "OK"
    for model_id, took in timings.items():
        record("S11", f"{model_id}: start -> FAILED with the loader's error", took, "s", f"worker starts: {starts[model_id]}")
    record("S11", "other deployment on the node: restarts", 0)
    for model_id in ("warmup-fails", "ts-add", "bystander"):
        stop(cluster, model_id)


def test_deadline_passed_while_queued_is_never_run_and_frees_its_slot(cluster: Cluster) -> None:
    """Scenario 16, through the gateway: the client's deadline travels to the worker."""
    resp = start(cluster, "slower", deployment_id="deadlines", instances=1, model_threads=1, queue_capacity=1)
    (only,) = resp.allocation.routing_table.values()
    x = np.ones(4, np.float32)
    began = time.monotonic()
    assert call(cluster.addr, "deadlines", x, token=cluster.token, timeout=60) == "OK"
    one = time.monotonic() - began
    before = worker_stats(cluster, only)
    short = 0.15  # the first call runs far longer than this (about 1 s on an idle core)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(call, cluster.addr, "deadlines", x, token=cluster.token, timeout=60)
        wait_until(lambda: worker_stats(cluster, only).number_of_pending_requests >= 1, timeout=10,
                   what="the first call to run")  # fmt: skip
        sent = time.monotonic()
        expired = call(cluster.addr, "deadlines", x, token=cluster.token, timeout=short)  # queued behind it, fills the queue
        late = time.monotonic() - (sent + short)
        # the expired call left the queue: the one slot (capacity 1) takes the next call at once
        pending_after = worker_stats(cluster, only).number_of_pending_requests
        next_call = pool.submit(call, cluster.addr, "deadlines", x, token=cluster.token, timeout=60)
        results = [running.result(timeout=60), next_call.result(timeout=60)]
    assert expired.startswith("DEADLINE_EXCEEDED"), (expired, one)
    assert pending_after <= 1, pending_after  # only the running call: the expired one left the queue
    assert results == ["OK", "OK"], results
    after = worker_stats(cluster, only)
    assert after.timeout_count - before.timeout_count == 1
    assert after.inference_count - before.inference_count == 2  # the expired call never ran
    assert after.rejected_execution_count == before.rejected_execution_count  # its slot was free again
    wait_until(lambda: cluster.deployments.GetDeploymentStats(dpb.GetDeploymentStatsRequest(deployment_id="deadlines"))
               .total.timeout_count >= 1, timeout=10, what="timeout_count in the deployment's stats")  # fmt: skip
    record("S16", "DEADLINE_EXCEEDED after the deadline passed (lateness)", late, "s", f"deadline {short:.2f} s, call {one:.2f} s")
    record("S16", "expired call: runs / timeout_count / queue slot freed", f"0 / +1 / yes (pending after: {pending_after})")
    stop(cluster, "deadlines")



def test_a_restarted_agent_kills_a_worker_its_predecessor_started_but_never_recorded(tmp_path: Path) -> None:
    """The previous agent was killed between spawning a worker and writing its state file (seen in
    the chaos soak): nothing names the worker, so the new agent must kill it before it starts the
    allocation again, or the node would run two workers for one allocation."""
    config = SupervisorConfig(data_dir=tmp_path / "agent")
    config.workers_dir.mkdir(parents=True)
    stand_in = [sys.executable, "-c", "import time; time.sleep(120)", "--ready-file"]
    unrecorded = subprocess.Popen([*stand_in, str(config.workers_dir / "a-0.ready")], start_new_session=True)
    elsewhere = subprocess.Popen([*stand_in, str(tmp_path / "other" / "a-0.ready")], start_new_session=True)
    try:
        wait_until(lambda: str(config.workers_dir) in " ".join(cmdline(unrecorded.pid)), timeout=10, what="the stand-in")

        async def no_fetch(model_sha256: str) -> Path:
            raise AssertionError("nothing is started during adoption")

        allocations = Allocations(config=config, fetch_model=no_fetch, on_change=lambda: None)  # type: ignore[arg-type]
        assert asyncio.run(allocations.adopt_existing()) == []
        assert unrecorded.wait(timeout=10) == -signal.SIGKILL
        assert elsewhere.poll() is None  # a process of another directory is none of its business
    finally:
        for proc in (unrecorded, elsewhere):
            proc.kill()
            proc.wait()
