"""Reliability scenarios of the control plane itself, with real processes and
shrunk timings (H = 0.2 s, T = 1 s, D = 2 s; recovery grace 10 s):

4. kill -9 mid-workload, several rounds (MODELFLEET_CP_KILL_ROUNDS, default
   3): every acknowledged write survives, workers keep serving direct
   callers with 0 errors and 0 restarts, agents reconnect within ~10 s and
   the routing table converges to what it was;
5. kill -9 during a stop, a drain (make-before-break move) and a rolling
   update: each resumes and completes, in-flight calls on the old
   allocation complete;
6. store crash consistency: after each kill the recovered deployments are
   exactly a prefix of the acknowledged history of starts, stops and
   deletes, and every record reads back whole (0 torn);
7. ambiguous commits: a retried mutation with the same request id (after a
   client timeout, or a control plane killed after its commit) returns the
   same deployment and creates nothing twice.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cluster import Cluster, wait_until, worker_processes
from faults import Load, call, node_workers, restart_control_plane, worker_stats
from figures import record
from modelbuild import onnx_add, onnx_slow, torchscript_add

from modelfleet.v1 import common_pb2, nodes_pb2
from modelfleet.v1 import deployments_pb2 as dpb

S = common_pb2
H, T, D = 0.2, 1.0, 2.0
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def start_req(model_id: str, **fields: object) -> dpb.StartDeploymentRequest:
    req = dpb.StartDeploymentRequest(model_id=model_id, **fields)  # type: ignore[arg-type]
    req.timeout.FromSeconds(60)
    return req


def start(c: Cluster, model_id: str, **fields: object) -> dpb.StartDeploymentResponse:
    return c.deployments.StartDeployment(start_req(model_id, **fields), timeout=90)


def table(c: Cluster, deployment_id: str) -> dict[str, dpb.RoutingEntry]:
    return dict(c.get(deployment_id).allocations[0].routing_table)


def ready_nodes(c: Cluster) -> int:
    try:
        nodes = c.nodes.ListNodes(nodes_pb2.ListNodesRequest(), timeout=5).nodes
    except grpc.RpcError:
        return 0
    return sum(1 for n in nodes if n.state == nodes_pb2.NODE_STATE_READY)


def retry(op: Callable[[], object], *, timeout: float = 60.0, gate: threading.Event | None = None) -> object:
    """Call op until it does not fail with UNAVAILABLE / DEADLINE_EXCEEDED (the control plane is down);
    each attempt waits for `gate` to be open when one is given."""
    deadline = time.monotonic() + timeout
    while True:
        if gate is not None:
            assert gate.wait(timeout), "the writer was held too long"
        try:
            return op()
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # pacing the retries of a client


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start_control_plane()
        yield c
    finally:
        print(f"orphan workers killed at cleanup: {c.close()}")


def two_nodes(c: Cluster, args: list[str] | None = None) -> None:
    for name in ("node-a", "node-b"):
        c.start_agent(name, cpus=4, extra_args=args or ())
    c.wait_nodes(2)


def snapshot_routes(c: Cluster, deployment_ids: list[str]) -> dict[str, dict[str, tuple[str, int, str]]]:
    return {d: {n: (e.allocation_id, e.routing_state, e.worker_address) for n, e in table(c, d).items()} for d in deployment_ids}


class Writer(threading.Thread):
    """Acknowledged writes, one after another, each retried with its request id
    until acknowledged: start p-i; once i > 3 also stop and delete p-(i-3)."""

    def __init__(self, c: Cluster) -> None:
        super().__init__(daemon=True, name="writer")
        self.c = c
        self.acked: list[tuple[str, str]] = []
        self.stopped = threading.Event()
        self.gate = threading.Event()  # cleared: no new attempt starts (a test reads the state meanwhile)
        self.gate.set()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for kind, name in write_ops():
                if self.stopped.is_set():
                    return
                rid = f"{kind}-{name}"
                if kind == "start":
                    req = start_req("add", deployment_id=name, wait_for=dpb.WAIT_FOR_STARTING, resources=S.Resources(cpus=4))
                    req.request_id = rid
                    retry(lambda: self.c.deployments.StartDeployment(req, timeout=5), gate=self.gate)
                elif kind == "stop":
                    retry(lambda: self.c.deployments.StopDeployment(dpb.StopDeploymentRequest(deployment_id=name, request_id=rid), timeout=5), gate=self.gate)
                else:
                    retry(lambda: self.c.deployments.DeleteDeployment(dpb.DeleteDeploymentRequest(deployment_id=name, request_id=rid), timeout=5), gate=self.gate)
                self.acked.append((kind, name))
                self.stopped.wait(0.02)  # workload pacing
        except BaseException as exc:  # reported by the test
            self.error = exc


def write_ops() -> Iterator[tuple[str, str]]:
    """The writers' history: start p-i; once i > 3 also stop and delete p-(i-3)."""
    i = 0
    while True:
        i += 1
        yield "start", f"p-{i}"
        if i > 3:
            yield "stop", f"p-{i - 3}"
            yield "delete", f"p-{i - 3}"


def expected_state(history: list[tuple[str, str]]) -> dict[str, str]:
    state: dict[str, str] = {}
    for kind, name in history:
        if kind == "start":
            state[name] = "running"
        elif kind == "stop":
            state[name] = "stopped"
        else:
            state.pop(name, None)
    return state


def prefix_of(state: dict[str, str], lo: int, hi: int) -> int | None:
    """k in [lo, hi] such that state is the history's first k writes applied, else None."""
    history = list(itertools.islice(write_ops(), hi))
    return next((k for k in range(lo, hi + 1) if expected_state(history[:k]) == state), None)


def actual_state(c: Cluster) -> dict[str, str]:
    listed = c.deployments.ListDeployments(dpb.ListDeploymentsRequest(), timeout=10).deployments
    return {
        d.deployment_id: "stopped" if d.status in (S.DEPLOYMENT_STATUS_STOPPED, S.DEPLOYMENT_STATUS_STOPPING) else "running"
        for d in listed
        if d.deployment_id.startswith("p-")
    }


def test_s4_control_plane_kill9_mid_workload_keeps_writes_workers_and_routes(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    two_nodes(c)
    c.upload(onnx_add(tmp_path / "add.onnx"), "add")
    start(c, "add", deployment_id="all", wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED)
    start(c, "add", deployment_id="one", instances=1)
    routes = snapshot_routes(c, ["all", "one"])
    workers = dict(worker_processes(c.root))
    assert len(workers) == 3
    direct = [(addr, d) for d, t in routes.items() for (_, _, addr) in t.values()]
    rounds = int(os.environ.get("MODELFLEET_CP_KILL_ROUNDS", "3"))
    downtimes, reconnects, converged = [], [], []
    writer = Writer(c)
    with Load(lambda: direct, threads=2, deadline=5.0, token=c.token) as load:
        writer.start()
        for _ in range(rounds):
            wait_until(lambda: len(writer.acked) >= 4, timeout=60, what="writes between kills")
            time.sleep(random.uniform(0.2, 1.0))  # pacing: kill at a random point of the workload
            acked_before = list(writer.acked)
            up = time.monotonic()
            downtimes.append(restart_control_plane(c))
            up = time.monotonic()
            wait_until(lambda: ready_nodes(c) == 2, timeout=30, interval=0.02, what="both agents reconnected")
            reconnects.append(time.monotonic() - up)
            wait_until(lambda: snapshot_routes(c, ["all", "one"]) == routes, timeout=30, what="routes converged")
            converged.append(time.monotonic() - up)
            state = actual_state(c)  # the writer goes on meanwhile, one write at a time
            assert prefix_of(state, len(acked_before), len(writer.acked) + 1) is not None, (len(acked_before), state)
        writer.stopped.set()
        writer.join(30)
    assert writer.error is None, writer.error
    assert actual_state(c) == expected_state(writer.acked)
    codes = load.codes()
    assert set(codes) == {"OK"}, codes  # direct callers saw no error at all
    assert not load.wrong() and not load.hung()
    assert dict(worker_processes(c.root)) == workers  # 0 worker restarts, 0 reloads
    assert max(reconnects) <= 10.0, reconnects
    record("S4", "kill -9 rounds / acknowledged writes / lost", f"{rounds} / {len(writer.acked)} / 0")
    record("S4", "control plane down (kill -9 -> listening again)", f"max {max(downtimes):.2f}", "s")
    record("S4", "agents reconnected after the control plane was back", f"max {max(reconnects):.2f}, all: "
           + ", ".join(f"{r:.2f}" for r in reconnects), "s", "backoff 1 s x 1.6 +-20 %")  # fmt: skip
    record("S4", "routing table converged (same allocations, addresses)", f"max {max(converged):.2f}", "s")
    record("S4", "direct inference calls meanwhile: OK / errors", f"{codes['OK']} / 0")
    record("S4", "worker restarts / reloads", "0 / 0")


def test_s5_stop_and_drain_in_progress_resume_after_a_crash(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    two_nodes(c, args=["--drain-timeout", str(D)])
    c.upload(onnx_slow(tmp_path / "slow.onnx", matmuls=16), "slow")
    c.upload(onnx_add(tmp_path / "add.onnx"), "add")
    # --- a stop in progress: acknowledged, then the control plane dies at once
    (old,) = start(c, "slow", instances=1, queue_capacity=16).allocation.routing_table.values()
    x = np.ones(4, np.float32)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        inflight = [pool.submit(call, old.worker_address, "slow", x, token=c.token) for _ in range(3)]
        wait_until(lambda: worker_stats(c, old).number_of_pending_requests >= 3, timeout=10, what="calls in flight")
        c.deployments.StopDeployment(dpb.StopDeploymentRequest(deployment_id="slow", request_id="stop-slow"), timeout=10)
        restart_control_plane(c)
        up = time.monotonic()
        wait_until(lambda: retry(lambda: c.get("slow")).status == S.DEPLOYMENT_STATUS_STOPPED, timeout=60,
                   what="the stop to complete")  # fmt: skip
        stopped = time.monotonic() - up
        results = [f.result(timeout=30) for f in inflight]
    assert results == ["OK"] * 3, results
    wait_until(lambda: not [p for p, (n, _) in worker_processes(c.root).items() if n == "slow"], timeout=30,
               what="the stopped worker to exit")  # fmt: skip

    # --- a drain (make-before-break move) in progress when the control plane dies
    start(c, "add", deployment_id="one", instances=1)
    (victim_id,) = table(c, "one")
    victim = next(n for n in ("node-a", "node-b") if c.node_id(n) == victim_id)
    survivor_id = next(c.node_id(n) for n in ("node-a", "node-b") if n != victim)
    old_address = table(c, "one")[victim_id].worker_address
    with Load(lambda: [(old_address, "one")], threads=1, deadline=5.0, token=c.token) as load:
        load.wait_calls(10)
        c.nodes.DrainNode(nodes_pb2.DrainNodeRequest(node_id=victim_id), timeout=10)
        restart_control_plane(c)
        up = time.monotonic()
        wait_until(lambda: not node_workers(c, victim), timeout=60, what="the drain to complete")
        moved = time.monotonic() - up
    assert {n for n, e in table(c, "one").items() if e.routing_state == S.ROUTING_STATE_STARTED} == {survivor_id}
    assert not c.nodes.GetNode(nodes_pb2.GetNodeRequest(node_id=victim_id)).schedulable
    codes = load.codes()
    # the old worker served until it drained; then it refuses (UNAVAILABLE), a call caught by its
    # server's own stop is CANCELLED, and once it is gone its port refuses (UNAVAILABLE); nothing hangs
    assert set(codes) <= {"OK", "UNAVAILABLE", "CANCELLED"} and codes["OK"] >= 10 and not load.hung(), (
        codes, [(o.code, o.details, round(o.ended - o.started, 3)) for o in load.snapshot() if o.code != "OK"])

    # --- a rolling update in progress (new worker settings: new allocations, make-before-break)
    (old_roll,) = start(c, "add", deployment_id="roll", instances=1).allocation.routing_table.values()
    old_pids = {p for p, (n, _) in worker_processes(c.root).items() if n == "roll"}
    upd = dpb.UpdateDeploymentRequest(deployment_id="roll", request_id="roll-threads", spec=dpb.StartDeploymentRequest(model_threads=2))
    upd.update_mask.paths.append("model_threads")
    with Load(lambda: [(old_roll.worker_address, "roll")], threads=1, deadline=5.0, token=c.token) as roll_load:
        roll_load.wait_calls(10)
        c.deployments.UpdateDeployment(upd, timeout=10)  # acknowledged; the new allocation may not even exist yet
        restart_control_plane(c)
        up = time.monotonic()

        def rolled() -> bool:
            d = retry(lambda: c.get("roll"))
            entries = [e for e in d.allocations[0].routing_table.values() if e.routing_state == S.ROUTING_STATE_STARTED]  # type: ignore[union-attr]
            return (not d.rollout and not d.retiring and d.allocations[0].task_parameters.model_threads == 2  # type: ignore[union-attr]
                    and [e.allocation_id for e in entries] != [old_roll.allocation_id] and len(entries) == 1
                    and not old_pids & set(worker_processes(c.root)))  # fmt: skip

        wait_until(rolled, timeout=60, what="the rolling update to complete")
        rolled_after = time.monotonic() - up
    roll_codes = roll_load.codes()
    assert set(roll_codes) <= {"OK", "UNAVAILABLE", "CANCELLED"} and roll_codes["OK"] >= 10 and not roll_load.hung(), roll_codes
    assert call(c.addr, "roll", np.ones((1, 4), np.float32), token=c.token) == "OK"
    record("S5", "kill -9 right after StopDeployment -> STOPPED after restart", stopped, "s",
           "in-flight calls on the old allocation: 3/3 OK")  # fmt: skip
    record("S5", "kill -9 right after DrainNode -> moved (make-before-break) after restart", moved, "s")
    record("S5", "kill -9 right after UpdateDeployment (rolling update) -> completed after restart", rolled_after, "s",
           f"calls to the old worker: {roll_codes['OK']} OK, then refused as it drained; 0 hung")  # fmt: skip


def test_s6_recovered_state_is_a_prefix_of_the_acknowledged_history(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    agent = c.start_agent("node-a", cpus=4)
    c.wait_nodes(1)
    c.upload(onnx_add(tmp_path / "add.onnx"), "add")
    agent.stop()  # its node record stays: starts are accepted and wait for capacity, no worker runs
    rounds = 3
    writer = Writer(c)
    writer.start()
    prefixes = []
    try:
        for _ in range(rounds):
            wait_until(lambda: len(writer.acked) >= 6, timeout=60, what="writes between kills")
            time.sleep(random.uniform(0.1, 0.6))  # pacing: kill at a random point
            assert c.cp is not None
            writer.gate.clear()  # the write in flight (if any) fails and waits; no other one starts
            c.cp.kill()
            c.start_control_plane(listen=c.addr)
            acked = len(writer.acked)  # settled: nothing can be acknowledged while the gate is shut
            state = retry(lambda: actual_state(c))
            k = prefix_of(state, acked, acked + 1)  # every acknowledged write, plus maybe the one in flight
            assert k is not None, (acked, state)
            prefixes.append(k - acked)
            writer.gate.set()  # it retries its write in flight with the same request id
    finally:
        writer.stopped.set()
        writer.join(30)
    assert writer.error is None, writer.error
    c.cp.stop()
    db = c.root / "cp" / "modelfleet.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    from control_plane.store.sqlite import SqliteStore  # every record decodes whole (DataLoss otherwise)

    store = SqliteStore(db)
    try:
        count = len(store.list_deployments()) + len(store.list_allocations()) + len(store.list_nodes())
    finally:
        store.close()
    record("S6", "kill -9 rounds / acknowledged writes / lost / torn records", f"{rounds} / {len(writer.acked)} / 0 / 0")
    record("S6", "unacknowledged writes found after each kill (0 or the 1 in flight)", ", ".join(map(str, prefixes)),
           note="the state read back is exactly the acknowledged prefix of the history, or it plus the write in flight")  # fmt: skip
    record("S6", "records read back whole after the last kill", count)


def _committed(c: Cluster, deployment_id: str) -> bool:
    try:
        return bool(table(c, deployment_id))
    except grpc.RpcError:
        return False


def test_s7_retried_mutations_with_the_same_request_id_create_nothing_twice(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    c.start_agent("node-a", cpus=4)
    c.wait_nodes(1)
    c.upload(onnx_add(tmp_path / "add.onnx"), "add")
    c.upload(torchscript_add(tmp_path / "add.pt"), "ts-add", fmt=S.MODEL_FORMAT_TORCHSCRIPT)
    same = 0
    # 1. the client gives up while the server waits for STARTED: committed, but the client cannot know
    # (a TorchScript worker needs over a second to import torch, far longer than the client waits)
    req = start_req("ts-add", deployment_id="idem", request_id="start-idem")
    with pytest.raises(grpc.RpcError) as err:
        c.deployments.StartDeployment(req, timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    first = c.deployments.StartDeployment(req, timeout=90)
    again = c.deployments.StartDeployment(req, timeout=90)
    assert first.deployment.revision == again.deployment.revision == 1
    ids = {e.allocation_id for e in first.allocation.routing_table.values()}
    assert ids == {e.allocation_id for e in again.allocation.routing_table.values()} and len(ids) == 1
    same += 2
    # 2. the control plane is killed after committing, while the caller waits
    # (the kill lands while the TorchScript worker still loads)
    req2 = start_req("ts-add", deployment_id="crash", request_id="start-crash", wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(c.deployments.StartDeployment, req2, timeout=90)
        wait_until(lambda: _committed(c, "crash"), timeout=60, interval=0.01, what="the deployment committed")
        restart_control_plane(c)
        with pytest.raises(grpc.RpcError) as err:
            pending.result(timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    retried = retry(lambda: c.deployments.StartDeployment(req2, timeout=90))
    (entry,) = retried.allocation.routing_table.values()  # type: ignore[attr-defined]
    assert retried.deployment.revision == 1  # type: ignore[attr-defined]
    assert [a for n, a in worker_processes(c.root).values() if n == "crash"] == [entry.allocation_id]
    same += 1
    # 3. update, stop and delete retried after an ambiguous outcome: the same answer, no second change
    upd = dpb.UpdateDeploymentRequest(deployment_id="idem", request_id="upd-idem", spec=dpb.StartDeploymentRequest(description="v2"))
    upd.update_mask.paths.append("description")
    r1 = c.deployments.UpdateDeployment(upd, timeout=10).deployment
    r2 = c.deployments.UpdateDeployment(upd, timeout=10).deployment
    assert r1.revision == r2.revision == 2 and r2.description == "v2"
    stop_req = dpb.StopDeploymentRequest(deployment_id="idem", request_id="stop-idem", wait=True)
    stop_req.timeout.FromSeconds(30)
    try:  # the client gives up before STOPPED (usually): ambiguous whether the stop was recorded
        c.deployments.StopDeployment(stop_req, timeout=0.05)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    s2 = c.deployments.StopDeployment(stop_req, timeout=40).deployment
    assert s2.status == S.DEPLOYMENT_STATUS_STOPPED and s2.revision == 3
    d1 = c.deployments.DeleteDeployment(dpb.DeleteDeploymentRequest(deployment_id="idem", request_id="del-idem"), timeout=10)
    d2 = c.deployments.DeleteDeployment(dpb.DeleteDeploymentRequest(deployment_id="idem", request_id="del-idem"), timeout=10)
    assert d1 == d2 and d2.deployment.deployment_id == "idem"
    same += 3
    with pytest.raises(grpc.RpcError) as err:  # a reused id with another request is refused
        c.deployments.DeleteDeployment(dpb.DeleteDeploymentRequest(deployment_id="crash", request_id="del-idem"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    deployments = [d.deployment_id for d in c.deployments.ListDeployments(dpb.ListDeploymentsRequest()).deployments]
    assert deployments == ["crash"]
    record("S7", "retried mutations answered with the same object", f"{same} of {same}",
           note="start after a client timeout (x2), start after kill -9 post-commit, update, stop, delete")  # fmt: skip
    record("S7", "objects created twice", 0)
