"""Scenario 23, the chaos soak: every 1-2 s kill -9 an agent, a worker or the
control plane (a supervisor restarts what was killed), for
MODELFLEET_SOAK_SECONDS (60 in CI; set it higher for a local soak), while
a workload creates deployments, verifies each through the gateway, and
retires the oldest (stop, delete), every mutation with a request id and
retried through the outages; and inference calls with a 5 s deadline run
against every live deployment throughout.

Checked: 0 acknowledged deployments lost (every acknowledged start, stop and
delete is reflected at the end), 0 calls unanswered past their deadline,
no over-allocation (no node ever holds more than it offers, never two
workers for one allocation), and convergence after the chaos stops (all
nodes READY, every live deployment RUNNING, exactly the wanted workers),
timed against 3T. Shrunk timings: H = 0.2 s, T = 1 s, D = 2 s, restart
backoff 0.2/0.4/0.8 s with the restart budget refilled after 3 s of service.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from cluster import Cluster, authed_channel, wait_until, worker_processes
from faults import Load, infer_once, restart_control_plane
from figures import record
from modelbuild import onnx_add

from modelfleet.inference import grpc_service_pb2_grpc as v2_grpc
from modelfleet.v1 import common_pb2, deployments_pb2_grpc, nodes_pb2, nodes_pb2_grpc
from modelfleet.v1 import deployments_pb2 as dpb

S = common_pb2
T = 1.0
NODES = ("node-a", "node-b", "node-c")
AGENT_ARGS = ["--restart-backoff", "0.2,0.4,0.8", "--restart-reset-after", "3", "--drain-timeout", "2"]
LIVE = 3  # deployments kept running at once
RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Stubs:
    """Own channel to the control plane (it survives restarts on the same address)."""

    def __init__(self, addr: str, token: str) -> None:
        self.channel = authed_channel(addr, token)
        self.deployments = deployments_pb2_grpc.DeploymentsStub(self.channel)
        self.nodes = nodes_pb2_grpc.NodesStub(self.channel)
        self.inference = v2_grpc.GRPCInferenceServiceStub(self.channel)


def retry(op: Callable[[], object], stop: threading.Event, *, timeout: float = 120.0, also: tuple = ()) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return op()
        except grpc.RpcError as exc:
            if exc.code() not in RETRY + also or time.monotonic() > deadline:
                raise
        if stop.wait(0.1):  # pacing of a client's retries
            raise TimeoutError("stopped")


class Workload(threading.Thread):
    """Creates, verifies and retires deployments; records what was acknowledged."""

    def __init__(self, addr: str, token: str) -> None:
        super().__init__(daemon=True, name="soak-workload")
        self.stubs = Stubs(addr, token)
        self.stop = threading.Event()
        self.acked: dict[str, str] = {}  # name -> running | stopped | deleted
        self.verify_s: list[float] = []
        self.unverified: list[str] = []
        self.error: BaseException | None = None

    def live(self) -> list[str]:
        return [n for n, s in list(self.acked.items()) if s == "running"]

    def run(self) -> None:
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                name = f"soak-{i}"
                req = dpb.StartDeploymentRequest(model_id="add", deployment_id=name, instances=2 if i % 3 == 0 else 1,
                                                 wait_for=dpb.WAIT_FOR_STARTING, request_id=f"start-{name}")  # fmt: skip
                req.timeout.FromSeconds(10)
                retry(lambda: self.stubs.deployments.StartDeployment(req, timeout=10), self.stop)
                self.acked[name] = "running"
                self._verify(name)
                live = self.live()
                while len(live) > LIVE and not self.stop.is_set():
                    self._retire(live.pop(0))
        except TimeoutError:
            pass
        except BaseException as exc:
            self.error = exc
        finally:
            self.stubs.channel.close()

    def _verify(self, name: str) -> None:
        """Until the gateway answers a correct result for it (or 60 s pass)."""
        began = time.monotonic()
        while time.monotonic() - began < 60 and not self.stop.is_set():
            code, _, correct = infer_once(self.stubs.inference, name, deadline=5)
            if code == "OK" and correct:
                self.verify_s.append(time.monotonic() - began)
                return
            self.stop.wait(0.1)  # pacing
        if not self.stop.is_set():
            self.unverified.append(name)

    def _retire(self, name: str) -> None:
        stop_req = dpb.StopDeploymentRequest(deployment_id=name, request_id=f"stop-{name}")
        retry(lambda: self.stubs.deployments.StopDeployment(stop_req, timeout=10), self.stop)
        self.acked[name] = "stopped"
        delete = dpb.DeleteDeploymentRequest(deployment_id=name, request_id=f"delete-{name}")
        # FAILED_PRECONDITION until its workers stopped
        retry(lambda: self.stubs.deployments.DeleteDeployment(delete, timeout=10), self.stop, also=(grpc.StatusCode.FAILED_PRECONDITION,))
        self.acked[name] = "deleted"


class Auditor(threading.Thread):
    """Samples node allocations and worker processes for over-allocation."""

    def __init__(self, addr: str, root: Path, token: str) -> None:
        super().__init__(daemon=True, name="soak-auditor")
        self.stubs = Stubs(addr, token)
        self.root = root
        self.stop = threading.Event()
        self.samples = 0
        self.over_capacity: list[str] = []
        self.duplicate_workers: list[str] = []

    def run(self) -> None:
        try:
            while not self.stop.wait(0.3):
                per_allocation = collections.Counter(a for _, a in worker_processes(self.root).values())
                self.duplicate_workers += [a for a, n in per_allocation.items() if n > 1]
                try:
                    nodes = self.stubs.nodes.ListNodes(nodes_pb2.ListNodesRequest(), timeout=5).nodes
                except grpc.RpcError:
                    continue
                self.samples += 1
                self.over_capacity += [f"{n.node_id}: {n.allocated.cpus:g}/{n.capacity.cpus:g}"
                                       for n in nodes if n.allocated.cpus > n.capacity.cpus + 1e-9]  # fmt: skip
        finally:
            self.stubs.channel.close()


def converged(c: Cluster, stubs: Stubs, acked: dict[str, str]) -> bool:
    try:
        nodes = stubs.nodes.ListNodes(nodes_pb2.ListNodesRequest(), timeout=5).nodes
        if sorted(n.state for n in nodes) != [nodes_pb2.NODE_STATE_READY] * len(NODES):
            return False
        wanted: set[str] = set()
        for name, state in acked.items():
            if state == "deleted":
                continue
            d = stubs.deployments.GetDeployment(dpb.GetDeploymentRequest(deployment_id=name), timeout=5)
            if state == "running":
                if d.status != S.DEPLOYMENT_STATUS_RUNNING:
                    return False
                wanted |= {e.allocation_id for e in d.allocations[0].routing_table.values() if e.routing_state == S.ROUTING_STATE_STARTED}
            elif d.status != S.DEPLOYMENT_STATUS_STOPPED:
                return False
        running = collections.Counter(a for _, a in worker_processes(c.root).values())
        return set(running) == wanted and all(n == 1 for n in running.values())
    except grpc.RpcError:
        return False


def test_s23_chaos_soak(tmp_path: Path) -> None:
    seconds = float(os.environ.get("MODELFLEET_SOAK_SECONDS", "60"))
    seed = int(os.environ.get("MODELFLEET_SOAK_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    print(f"chaos seed {seed} (MODELFLEET_SOAK_SEED={seed} replays the same fault choices)")
    c = Cluster(tmp_path)
    faults: collections.Counter[str] = collections.Counter()
    try:
        c.start_control_plane()
        for name in NODES:
            c.start_agent(name, cpus=3, extra_args=AGENT_ARGS)
        c.wait_nodes(len(NODES))
        c.upload(onnx_add(tmp_path / "add.onnx"), "add")
        workload, auditor = Workload(c.addr, c.token), Auditor(c.addr, c.root, c.token)
        load = Load(lambda: [(c.addr, n) for n in workload.live()], threads=2, deadline=5.0, pace=0.05, token=c.token)
        workload.start()
        auditor.start()
        with load:
            wait_until(lambda: workload.verify_s, timeout=60, what="the first deployment verified")
            chaos_began = time.monotonic()
            while time.monotonic() - chaos_began < seconds:
                time.sleep(rng.uniform(1.0, 2.0))  # the chaos pacing: one fault every 1-2 s
                kind = rng.choice(("agent", "worker", "control plane"))
                if kind == "agent":
                    name = rng.choice(NODES)
                    c.agents[name].kill()
                    c.start_agent(name, cpus=3, extra_args=AGENT_ARGS)
                elif kind == "worker":
                    pids = list(worker_processes(c.root))
                    if not pids:
                        continue
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                else:
                    restart_control_plane(c)
                faults[kind] += 1
            chaos_ended = time.monotonic()
            workload.stop.set()
            workload.join(60)
            stubs = Stubs(c.addr, c.token)
            try:
                wait_until(lambda: converged(c, stubs, dict(workload.acked)), timeout=120, interval=0.05,
                           what="convergence after the chaos")  # fmt: skip
                convergence = time.monotonic() - chaos_ended
                final = {n: stubs.deployments.GetDeployment(dpb.GetDeploymentRequest(deployment_id=n), timeout=5)
                         for n, s in workload.acked.items() if s != "deleted"}  # fmt: skip
                listed = {d.deployment_id for d in stubs.deployments.ListDeployments(dpb.ListDeploymentsRequest(), timeout=5).deployments}
                answers = {n: infer_once(stubs.inference, n, deadline=5) for n in workload.live()}
            finally:
                stubs.channel.close()
        auditor.stop.set()
        auditor.join(10)
    finally:
        orphans = c.close()
    assert workload.error is None, repr(workload.error)
    lost = [n for n, s in workload.acked.items() if (s == "deleted") == (n in listed)]
    assert not lost, lost
    assert all(final[n].status == (S.DEPLOYMENT_STATUS_RUNNING if s == "running" else S.DEPLOYMENT_STATUS_STOPPED)
               for n, s in workload.acked.items() if s != "deleted")  # fmt: skip
    codes, hung = load.codes(), load.hung()
    assert not hung, hung[:3]
    assert not load.wrong()
    assert not auditor.over_capacity and not auditor.duplicate_workers, (auditor.over_capacity, auditor.duplicate_workers)
    assert not orphans, orphans
    assert all(code == "OK" and correct for code, _, correct in answers.values()), answers
    record("S23", "chaos: seconds / faults injected", f"{seconds:g} / {sum(faults.values())}",
           note=", ".join(f"{k} {v}" for k, v in sorted(faults.items())) + f"; seed {seed}")  # fmt: skip
    record("S23", "acknowledged deployments created / retired / lost", f"{len(workload.acked)} / "
           f"{sum(1 for s in workload.acked.values() if s != 'running')} / 0")  # fmt: skip
    record("S23", "deployments verified through the gateway / not within 60 s", f"{len(workload.verify_s)} / {len(workload.unverified)}",
           note=f"median {float(np.median(workload.verify_s)):.2f} s from the acknowledged start")  # fmt: skip
    record("S23", "calls: total / OK / unanswered past deadline / DEADLINE_EXCEEDED", f"{sum(codes.values())} / {codes['OK']} / "
           f"{len(hung)} / {codes['DEADLINE_EXCEEDED']}", note=", ".join(f"{k} {v}" for k, v in sorted(codes.items()) if k != "OK"))  # fmt: skip
    record("S23", "over-allocation samples (node over capacity / two workers for one allocation)",
           f"{len(auditor.over_capacity)} / {len(auditor.duplicate_workers)} of {auditor.samples}")  # fmt: skip
    record("S23", "convergence after the chaos stopped", convergence, "s", f"3T = {3 * T:g} s")
