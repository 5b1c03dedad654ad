"""Reliability scenarios of nodes and their agents, with real processes
(control plane, agents, workers on 127.0.0.1, port 0) and shrunk timings
(heartbeat H = 0.2 s, node timeout T = 1 s, drain D = 2 s):

1. node crash (agent and its workers kill -9): routes FAILED "node lost"
   within T + 2H, fixed-instance deployments reallocated, no call hangs;
2. agent SIGTERM: routes STOPPING, new calls UNAVAILABLE, queued calls
   finish within D with 0 errors, then STOPPED;
3. agent kill -9 and restart with the same node id: allocations back
   STARTED with the same workers, exactly one worker per allocation;
8. silent partition (SIGSTOP the agent): node lost within T, the slot moves,
   after SIGCONT the stale allocation is fenced and stopped, and two nodes
   are never routed for one slot;
9. node join: a deployment waiting for capacity is placed within one
   reconcile; started allocations are not restarted;
and `modelfleet nodes drain` moving allocations make-before-break, then
`uncordon`. Each test builds its own cluster and leaves no worker behind.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cluster import ROOT, Cluster, wait_until, worker_processes
from faults import NOT_ROUTED, Load, Sampler, Watcher, call, kill_node, node_workers, worker_stats
from figures import record
from modelbuild import onnx_add, onnx_slow

from modelfleet.v1 import common_pb2, nodes_pb2
from modelfleet.v1 import deployments_pb2 as dpb

S = common_pb2
H, T, D = 0.2, 1.0, 2.0


def start(c: Cluster, model_id: str, **fields: object) -> dpb.StartDeploymentResponse:
    req = dpb.StartDeploymentRequest(model_id=model_id, **fields)  # type: ignore[arg-type]
    req.timeout.FromSeconds(60)
    return c.deployments.StartDeployment(req, timeout=90)


def table(c: Cluster, deployment_id: str) -> dict[str, dpb.RoutingEntry]:
    return dict(c.get(deployment_id).allocations[0].routing_table)


def node_of(c: Cluster, deployment_id: str) -> str:
    (node,) = [n for n, e in table(c, deployment_id).items() if e.routing_state == S.ROUTING_STATE_STARTED]
    return node


def node_state(c: Cluster, node_id: str) -> int:
    return c.nodes.GetNode(nodes_pb2.GetNodeRequest(node_id=node_id)).state


def pids_by_allocation(root: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for pid, (_, allocation_id) in worker_processes(root).items():
        out.setdefault(allocation_id, []).append(pid)
    return out


def running_allocations(c: Cluster) -> set[str]:
    """Allocation ids the control plane wants running (routing tables; desired-stopped ones drop out)."""
    ids = set()
    for d in c.deployments.ListDeployments(dpb.ListDeploymentsRequest(view=S.VIEW_FULL)).deployments:
        for alloc in d.allocations:
            ids |= {e.allocation_id for e in alloc.routing_table.values() if e.routing_state == S.ROUTING_STATE_STARTED}
    return ids


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start_control_plane()
        yield c
    finally:
        orphans = c.close()
        print(f"orphan workers killed at cleanup: {orphans}")


def two_nodes(c: Cluster, cpus: int = 4, args: list[str] | None = None) -> dict[str, str]:
    """node-a and node-b; returns name -> node id."""
    for name in ("node-a", "node-b"):
        c.start_agent(name, cpus=cpus, extra_args=args or ())
    c.wait_nodes(2)
    return {name: c.node_id(name) for name in ("node-a", "node-b")}


def name_of(ids: dict[str, str], node_id: str) -> str:
    return next(name for name, nid in ids.items() if nid == node_id)


def test_s1_node_crash_routes_fail_within_t_plus_2h_and_fixed_instances_move(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    ids = two_nodes(c)
    c.upload(onnx_add(tmp_path / "add.onnx"), "add")
    start(c, "add", deployment_id="one-1", instances=1)
    start(c, "add", deployment_id="one-2", instances=1)  # the other node: it has more free CPUs
    start(c, "add", deployment_id="all", wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED)
    victim_id = node_of(c, "one-1")
    victim = name_of(ids, victim_id)
    survivor_id = next(n for n in ids.values() if n != victim_id)
    assert node_of(c, "one-2") == survivor_id
    deployments = ("one-1", "one-2", "all")
    with Load(lambda: [(c.addr, d) for d in deployments], threads=3, deadline=5.0, token=c.token) as load:
        load.wait_calls(30)
        killed = time.monotonic()
        kill_node(c, victim)
        wait_until(lambda: all(table(c, d)[victim_id].routing_state == S.ROUTING_STATE_FAILED
                               and table(c, d)[victim_id].reason == "node lost" for d in ("one-1", "all")),
                   timeout=30, interval=0.02, what="the dead node's routes FAILED 'node lost'")  # fmt: skip
        detected = time.monotonic() - killed
        wait_until(lambda: survivor_id in table(c, "one-1"), timeout=10, interval=0.02, what="one-1 reallocated")
        reallocated = time.monotonic() - killed
        wait_until(lambda: table(c, "one-1")[survivor_id].routing_state == S.ROUTING_STATE_STARTED, timeout=60,
                   what="one-1 started on the survivor")  # fmt: skip
        started = time.monotonic() - killed
        load.wait_calls(30)
    before = [o for o in load.snapshot() if o.started < killed]
    codes, hung = load.codes(), load.hung()
    assert not hung, hung[:3]
    assert not load.wrong()
    assert codes["DEADLINE_EXCEEDED"] == 0, codes
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert all(o.ended - o.started <= load.deadline for o in before)
    assert node_of(c, "one-1") == survivor_id and node_of(c, "one-2") == survivor_id
    assert c.get("all").allocations[0].routing_table[survivor_id].routing_state == S.ROUTING_STATE_STARTED
    assert detected <= T + 2 * H + 1.0, detected  # T + 2H, plus slack for a shared 2-core machine
    record("S1", "kill -9 (agent + workers) -> routes FAILED 'node lost'", detected, "s", f"promise T + 2H = {T + 2 * H:g} s")
    record("S1", "kill -9 -> fixed-instance deployment reallocated (placed)", reallocated, "s")
    record("S1", "kill -9 -> reallocated worker STARTED", started, "s")
    record("S1", "calls: accepted before the kill / hung / DEADLINE_EXCEEDED", f"{len(before)} / {len(hung)} / 0")
    record("S1", "calls failed fast (UNAVAILABLE) of all", f"{codes['UNAVAILABLE']} of {sum(codes.values())}",
           note="in flight on the dead workers, or one-1 before its replacement started")  # fmt: skip


def test_s2_agent_sigterm_drains_queued_calls_then_stops(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    agent = c.start_agent("node-a", cpus=4, extra_args=["--drain-timeout", str(D)])
    c.wait_nodes(1)
    node = c.node_id("node-a")
    c.upload(onnx_slow(tmp_path / "slow.onnx", matmuls=16), "slow")
    (first,) = start(c, "slow", instances=1, queue_capacity=16).allocation.routing_table.values()
    x = np.ones(4, np.float32)

    began = time.monotonic()
    assert call(first.worker_address, "slow", x, token=c.token) == "OK"
    queued = max(2, min(6, int(0.8 / (time.monotonic() - began))))
    (pid,) = node_workers(c, "node-a")
    watcher = Watcher(c, "slow")
    try:
        with concurrent.futures.ThreadPoolExecutor(queued) as pool:
            calls = [pool.submit(call, first.worker_address, "slow", x, token=c.token) for _ in range(queued)]
            wait_until(lambda: worker_stats(c, first).number_of_pending_requests >= queued, timeout=10,
                       what="calls queued at the worker")  # fmt: skip
            term = time.monotonic()
            agent.signal(signal.SIGTERM)
            stopping = wait_until(lambda: watcher.first(node, S.ROUTING_STATE_STOPPING, after=term), timeout=10,
                                  what="route STOPPING")  # fmt: skip
            refused = call(c.addr, "slow", x, token=c.token)  # the gateway no longer routes to it
            results = [f.result(timeout=30) for f in calls]
            finished = time.monotonic()
        stopped = wait_until(lambda: watcher.first(node, S.ROUTING_STATE_STOPPED, after=term), timeout=30,
                             what="route STOPPED")  # fmt: skip
        assert agent.popen.wait(30) == 0
        exited = time.monotonic()
    finally:
        watcher.close()
    assert refused.startswith("UNAVAILABLE"), refused
    assert results == ["OK"] * queued, results
    assert not node_workers(c, "node-a") and pid not in worker_processes()
    # the node is lost after T, but a route its agent stopped gracefully stays STOPPED
    wait_until(lambda: c.nodes.GetNode(nodes_pb2.GetNodeRequest(node_id=node)).state == nodes_pb2.NODE_STATE_LOST,
               timeout=10, what="node LOST")  # fmt: skip
    assert table(c, "slow")[node].routing_state == S.ROUTING_STATE_STOPPED
    assert finished - term <= D + 1.5, finished - term  # D, plus the STOPPING announcement (at most 1 s)
    record("S2", "agent SIGTERM -> routes STOPPING", stopping[0] - term, "s")
    record("S2", "agent SIGTERM: queued calls finished / errors", f"{results.count('OK')} / 0",
           note=f"last done {finished - term:.2f} s after SIGTERM; D = {D:g} s")  # fmt: skip
    record("S2", "agent SIGTERM -> routes STOPPED; agent exit 0", f"{stopped[0] - term:.2f} s; {exited - term:.2f} s")


def test_s3_agent_restart_same_node_id_adopts_workers(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    ids = two_nodes(c)
    c.upload(onnx_add(tmp_path / "add.onnx"), "add")
    for name in ("all-1", "all-2"):
        start(c, "add", deployment_id=name, wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED)
    start(c, "add", deployment_id="one", instances=1)
    victim_id = node_of(c, "one")
    victim = name_of(ids, victim_id)
    before = {d: table(c, d)[victim_id] for d in ("all-1", "all-2")}
    pids_before = dict(node_workers(c, victim))
    assert len(pids_before) == 3
    killed = time.monotonic()
    c.agents[victim].kill()  # the agent only: its workers keep running
    wait_until(lambda: node_state(c, victim_id) != nodes_pb2.NODE_STATE_READY, timeout=10, what="node not READY")
    restarted = time.monotonic()
    c.start_agent(victim, cpus=4)
    assert c.node_id(victim) == victim_id

    def back_started() -> bool:
        entries = [table(c, d)[victim_id] for d in before]
        return node_state(c, victim_id) == nodes_pb2.NODE_STATE_READY and all(
            e.routing_state == S.ROUTING_STATE_STARTED and e.reason != NOT_ROUTED for e in entries
        )

    wait_until(back_started, timeout=60, what="allocations back STARTED on the re-registered node")
    back = time.monotonic() - restarted
    wait_until(lambda: all(len(p) == 1 for p in pids_by_allocation(c.root).values())
               and set(pids_by_allocation(c.root)) == running_allocations(c), timeout=30,
               what="exactly one worker per allocation")  # fmt: skip
    after = {d: table(c, d)[victim_id] for d in before}
    for d in before:  # the same allocation and the same worker: adopted, not reloaded
        assert after[d].allocation_id == before[d].allocation_id
        assert after[d].worker_address == before[d].worker_address
    survived = {pid for pid, (name, _) in pids_before.items() if name != "one"}
    assert survived <= set(node_workers(c, victim))
    moved = node_of(c, "one") != victim_id
    assert len([p for p, (n, _) in worker_processes(c.root).items() if n == "one"]) == 1
    record("S3", "agent restart (same node id) -> allocations STARTED again", back, "s",
           f"restarted {restarted - killed:.2f} s after the kill; T = {T:g} s")  # fmt: skip
    record("S3", "workers reloaded / workers per allocation", f"0 / 1 (fixed-instance one moved: {moved})")


def test_s8_silent_partition_is_fenced_by_generation(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    ids = two_nodes(c)
    c.upload(onnx_add(tmp_path / "add.onnx"), "add")
    start(c, "add", deployment_id="one", instances=1)
    start(c, "add", deployment_id="all", wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED)
    victim_id = node_of(c, "one")
    victim = name_of(ids, victim_id)
    survivor_id = next(n for n in ids.values() if n != victim_id)
    stale = {pid for pid, (name, _) in node_workers(c, victim).items() if name == "one"}
    keep = {pid for pid, (name, _) in node_workers(c, victim).items() if name == "all"}
    all_entry = table(c, "all")[victim_id]
    with Sampler(c, ["one", "all"]) as sampler:
        frozen = time.monotonic()
        c.agents[victim].signal(signal.SIGSTOP)
        try:
            wait_until(lambda: table(c, "one")[victim_id].reason == "node lost", timeout=30, interval=0.02,
                       what="node lost")  # fmt: skip
            lost = time.monotonic() - frozen
            wait_until(lambda: table(c, "one").get(survivor_id, dpb.RoutingEntry()).routing_state == S.ROUTING_STATE_STARTED,
                       timeout=60, what="the slot started on the other node")  # fmt: skip
            moved = time.monotonic() - frozen
        finally:
            thawed = time.monotonic()
            c.agents[victim].signal(signal.SIGCONT)
        wait_until(lambda: not stale & set(worker_processes(c.root)), timeout=30, what="the stale worker stopped")
        fenced = time.monotonic() - thawed
        wait_until(lambda: table(c, "all")[victim_id].routing_state == S.ROUTING_STATE_STARTED, timeout=30,
                   what="the thawed node's other allocation STARTED again")  # fmt: skip
    overlap = sampler.longest_over("one", 1)
    assert overlap <= H, overlap
    assert table(c, "all")[victim_id].allocation_id == all_entry.allocation_id
    assert keep <= set(node_workers(c, victim))  # not reloaded
    assert [n for p, (n, _) in worker_processes(c.root).items() if n == "one"] == ["one"]
    assert lost <= T + 2 * H + 1.0, lost
    record("S8", "SIGSTOP agent -> node lost", lost, "s", f"T = {T:g} s")
    record("S8", "SIGSTOP agent -> slot STARTED on another node", moved, "s")
    record("S8", "SIGCONT -> stale allocation's worker stopped (fenced)", fenced, "s")
    record("S8", "longest time two nodes were routed for one slot", overlap, "s", f"promise: at most H = {H:g} s")


def test_s9_joining_node_gets_waiting_deployment_within_one_reconcile(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    c.start_agent("node-a", cpus=2)
    c.wait_nodes(1)
    c.upload(onnx_add(tmp_path / "add.onnx"), "add")
    start(c, "add", deployment_id="small", instances=1)
    small = table(c, "small")
    small_pids = {p for p, (n, _) in worker_processes(c.root).items() if n == "small"}
    resp = start(c, "add", deployment_id="big", instances=1, inference_threads=2, wait_for=dpb.WAIT_FOR_STARTING)
    assert not resp.allocation.routing_table and "waiting for capacity" in c.get("big").status_reason
    joined = time.monotonic()
    c.start_agent("node-b", cpus=4)
    node_b = c.node_id("node-b")

    def ready() -> bool:
        return c.nodes.GetNode(nodes_pb2.GetNodeRequest(node_id=node_b)).state == nodes_pb2.NODE_STATE_READY

    wait_until(lambda: _exists(c, node_b) and ready(), timeout=60, interval=0.02, what="node-b READY")
    seen_ready = time.monotonic()
    placed = node_b in table(c, "big")
    wait_until(lambda: node_b in table(c, "big"), timeout=5, interval=0.02, what="big placed on node-b")
    placed_after = time.monotonic() - seen_ready
    wait_until(lambda: table(c, "big")[node_b].routing_state == S.ROUTING_STATE_STARTED, timeout=60, what="big started")
    started = time.monotonic() - joined
    assert placed, "not placed in the reconcile that the registration ran"
    assert table(c, "small") == small
    assert {p for p, (n, _) in worker_processes(c.root).items() if n == "small"} == small_pids
    record("S9", "node READY -> waiting deployment placed", placed_after, "s", "placed by the registration's own reconcile")
    record("S9", "agent start -> waiting deployment STARTED", started, "s")
    record("S9", "started allocations restarted", 0)


def _exists(c: Cluster, node_id: str) -> bool:
    return any(n.node_id == node_id for n in c.nodes.ListNodes(nodes_pb2.ListNodesRequest()).nodes)


def cli(c: Cluster, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "modelfleet.cli.main", "--addr", c.addr, *args],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "MODELFLEET_TOKEN": c.token})  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_drain_moves_allocations_make_before_break_and_uncordon(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    ids = two_nodes(c)
    c.upload(onnx_add(tmp_path / "add.onnx"), "add")
    start(c, "add", deployment_id="one", instances=1)
    start(c, "add", deployment_id="all", wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED)
    victim_id = node_of(c, "one")
    victim = name_of(ids, victim_id)
    survivor_id = next(n for n in ids.values() if n != victim_id)
    with Sampler(c, ["one", "all"]) as sampler, Load(lambda: [(c.addr, "one"), (c.addr, "all")], threads=2, token=c.token) as load:
        load.wait_calls(20)
        drained = time.monotonic()
        out = cli(c, "nodes", "drain", victim_id, "--wait", "--timeout", "60s")  # returns once nothing is left on it
        moved = time.monotonic() - drained
        assert "cordoned" in out and not c.nodes.GetNode(nodes_pb2.GetNodeRequest(node_id=victim_id)).allocation_ids
        wait_until(lambda: not node_workers(c, victim), timeout=30, what="the drained node's workers to exit")
        load.wait_calls(20)
    assert node_of(c, "one") == survivor_id
    routed_one = [nodes for at, nodes in sampler.routed("one") if at >= drained]
    routed_all = [nodes for at, nodes in sampler.routed("all") if at >= drained]
    assert min(len(n) for n in routed_one) >= 1 and min(len(n) for n in routed_all) >= 1
    codes = load.codes()
    assert set(codes) == {"OK"}, codes
    assert not load.hung()
    # uncordon: eligible again; the every-node deployment comes back to it, the moved one stays
    uncordoned = time.monotonic()
    assert "schedulable:    true" in cli(c, "nodes", "uncordon", victim_id)
    wait_until(lambda: table(c, "all").get(victim_id, dpb.RoutingEntry()).routing_state == S.ROUTING_STATE_STARTED,
               timeout=60, what="'all' back on the uncordoned node")  # fmt: skip
    back = time.monotonic() - uncordoned
    assert node_of(c, "one") == survivor_id
    record("drain", "`modelfleet nodes drain --wait` -> node holds no allocation", moved, "s",
           "replacement STARTED before the old one stopped; includes the CLI's start-up")  # fmt: skip
    record("drain", "fewest routed workers per deployment during the drain", min(min(len(n) for n in routed_one),
           min(len(n) for n in routed_all)))  # fmt: skip
    record("drain", "calls during the drain: OK / failed", f"{codes['OK']} / {sum(codes.values()) - codes['OK']}")
    record("drain", "uncordon -> every-node deployment STARTED there again", back, "s")
