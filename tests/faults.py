"""Tools of the reliability tests: fault injection on real processes, an
inference workload that records the fate of every call, and a sampler of
routing tables.

- `kill_node` SIGKILLs an agent and every worker it started (a host crash);
  `Proc.kill` alone is an agent crash (its workers survive, as designed).
- `Load` runs threads that send KServe V2 ModelInfer calls (the `add` test
  model: y = x + [1, 2, 3, 4]) with a deadline and records each outcome:
  status code, start and end time, and whether the answer was correct. A
  call is "hung" when it ended later than its deadline plus a slack; the
  client-side deadline makes that a bug of the client library, so the
  interesting counts are the statuses, DEADLINE_EXCEEDED among them.
- `Sampler` polls GetDeployment every few tens of milliseconds and keeps
  (time, routing table) pairs, so a test can measure when a route changed
  or how long two nodes were both routed for one slot.

Threads only (the pytest process must not import tritonclient, and needs
no asyncio here); every wait has a deadline.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from cluster import Cluster, authed_channel, wait_until, worker_processes

from modelfleet.inference import grpc_service_pb2 as v2
from modelfleet.inference import grpc_service_pb2_grpc as v2_grpc
from modelfleet.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from modelfleet.v1 import deployments_pb2 as dpb

STARTED = common_pb2.ROUTING_STATE_STARTED
NOT_ROUTED = "node is not responding; not routed to"
ADD = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)


# ---- processes -------------------------------------------------------------------------
def node_workers(cluster: Cluster, name: str) -> dict[int, tuple[str, str]]:
    """Workers started by agent `name` (their ready files lie in its data dir)."""
    return worker_processes(cluster.root / name)


def kill_node(cluster: Cluster, name: str) -> list[int]:
    """A host crash: SIGKILL agent `name` and then every worker it started."""
    cluster.agents[name].kill()
    pids = sorted(node_workers(cluster, name))
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not node_workers(cluster, name), timeout=10, what=f"{name}'s workers to die")
    return pids


def restart_control_plane(cluster: Cluster) -> float:
    """kill -9 the control plane and start it again on the same address; returns the downtime."""
    assert cluster.cp is not None
    killed = time.monotonic()
    cluster.cp.kill()
    cluster.start_control_plane(listen=cluster.addr)
    return time.monotonic() - killed


def deployment_pids(deployment_id: str, root: Path) -> set[int]:
    return {pid for pid, (name, _) in worker_processes(root).items() if name == deployment_id}


def worker_stats(c: Cluster, entry: dpb.RoutingEntry) -> common_pb2.InferenceStats:
    """A worker's statistics straight from it (WorkerControl takes only its worker token,
    which the agent keeps in DIR/workers/<allocation>.token)."""
    tokens = list(c.root.glob(f"*/workers/{entry.allocation_id}.token"))
    token = tokens[0].read_text().strip() if tokens else ""
    with authed_channel(entry.worker_address, token) as channel:
        stub = worker_pb2_grpc.WorkerControlStub(channel)
        return stub.GetWorkerStats(worker_pb2.GetWorkerStatsRequest(), timeout=5).stats


def call(address: str, model: str, x: np.ndarray, *, token: str, timeout: float = 30) -> str:
    """One ModelInfer ("OK" or "CODE: details"), as a client with the key `token`."""
    with authed_channel(address, token) as channel:
        try:
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(model, x), timeout=timeout)
            return "OK"
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"


# ---- the inference workload ------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    target: str
    started: float
    ended: float
    code: str  # "OK" or a grpc.StatusCode name
    details: str = ""
    correct: bool = True


def infer_request(model: str, x: np.ndarray) -> v2.ModelInferRequest:
    req = v2.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    return req


def infer_once(stub: v2_grpc.GRPCInferenceServiceStub, model: str, *, deadline: float) -> tuple[str, str, bool]:
    x = np.random.default_rng().random((1, 4), dtype=np.float32)
    try:
        reply = stub.ModelInfer(infer_request(model, x), timeout=deadline)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", True
    got = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(1, 4)
    return "OK", "", bool(np.array_equal(got, x + ADD))


class Load:
    """Threads calling ModelInfer on (address, model) targets with a deadline.

    Args:
        targets: called before every call; returns the (address, model) pairs
            to choose from (so a test can change them while running).
        token: the API key the calls present (one with `infer`).
        deadline: seconds each call may take.
        pace: seconds a thread waits between its calls (workload pacing).
    """

    def __init__(
        self,
        targets: Callable[[], list[tuple[str, str]]],
        *,
        threads: int = 2,
        deadline: float = 5.0,
        pace: float = 0.02,
        token: str = "",
    ) -> None:
        self._targets = targets
        self._token = token
        self.deadline = deadline
        self._pace = pace
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"load-{i}") for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.deadline + 10)

    def _run(self) -> None:
        channels: dict[str, tuple[grpc.Channel, v2_grpc.GRPCInferenceServiceStub]] = {}
        try:
            while not self._stop.is_set():
                targets = self._targets()
                if not targets:
                    self._stop.wait(self._pace)
                    continue
                address, model = random.choice(targets)
                if address not in channels:
                    channel = authed_channel(address, self._token)
                    channels[address] = (channel, v2_grpc.GRPCInferenceServiceStub(channel))
                began = time.monotonic()
                code, details, correct = infer_once(channels[address][1], model, deadline=self.deadline)
                with self._lock:
                    self.outcomes.append(Outcome(f"{address}/{model}", began, time.monotonic(), code, details, correct))
                self._stop.wait(self._pace)
        finally:
            for channel, _ in channels.values():
                channel.close()

    # ---- results ----
    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def codes(self, outcomes: Iterable[Outcome] | None = None) -> collections.Counter[str]:
        return collections.Counter(o.code for o in (self.snapshot() if outcomes is None else outcomes))

    def hung(self, slack: float = 1.0) -> list[Outcome]:
        """Calls that ended later than their deadline (+ slack): unanswered past the deadline."""
        return [o for o in self.snapshot() if o.ended - o.started > self.deadline + slack]

    def wrong(self) -> list[Outcome]:
        return [o for o in self.snapshot() if o.code == "OK" and not o.correct]

    def wait_calls(self, count: int, *, timeout: float = 30.0) -> None:
        mark = len(self.snapshot())
        wait_until(lambda: len(self.snapshot()) >= mark + count, timeout=timeout, what=f"{count} more calls")


# ---- routing tables over time ------------------------------------------------------------
@dataclass
class Sampler:
    """Polls the routing tables of deployments every `interval` seconds."""

    cluster: Cluster
    deployment_ids: list[str]
    interval: float = 0.03
    samples: list[tuple[float, dict[str, dpb.Allocation]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="route-sampler")

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                tables = {d: self.cluster.get(d).allocations[0] for d in self.deployment_ids}
            except grpc.RpcError:
                tables = {}
            if tables:
                self.samples.append((now, tables))
            self._stop.wait(self.interval)

    def routed(self, deployment_id: str) -> list[tuple[float, set[str]]]:
        """(time, nodes the gateway routes to: STARTED on a responding node) per sample."""
        out = []
        for at, tables in self.samples:
            table = tables.get(deployment_id)
            if table is None:
                continue
            nodes = {n for n, e in table.routing_table.items() if e.routing_state == STARTED and e.reason != NOT_ROUTED}
            out.append((at, nodes))
        return out

    def longest_over(self, deployment_id: str, limit: int) -> float:
        """The longest stretch of time in which more than `limit` nodes were routed."""
        longest, began = 0.0, None
        for at, nodes in self.routed(deployment_id):
            if len(nodes) > limit:
                began = at if began is None else began
                longest = max(longest, at - began)
            else:
                began = None
        return longest

    def first(self, predicate: Callable[[dict[str, dpb.Allocation]], bool], *, after: float = 0.0) -> float | None:
        """The time of the first sample after `after` for which predicate holds."""
        for at, tables in self.samples:
            if at >= after and predicate(tables):
                return at
        return None


class Watcher:
    """WatchDeployment in a thread: every snapshot of one deployment, timed."""

    def __init__(self, cluster: Cluster, deployment_id: str) -> None:
        self.snapshots: list[tuple[float, dpb.Deployment]] = []
        self._call = cluster.deployments.WatchDeployment(dpb.WatchDeploymentRequest(deployment_id=deployment_id))
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{deployment_id}")
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._call:
                self.snapshots.append((time.monotonic(), item.deployment))
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)

    def routes(self, node_id: str) -> list[tuple[float, int, str]]:
        """(time, routing state, reason) of node_id's entry, at every change."""
        out: list[tuple[float, int, str]] = []
        for at, deployment in list(self.snapshots):
            entry = deployment.allocations[0].routing_table.get(node_id)
            if entry is not None and (not out or out[-1][1:] != (entry.routing_state, entry.reason)):
                out.append((at, entry.routing_state, entry.reason))
        return out

    def first(self, node_id: str, state: int, *, after: float = 0.0) -> tuple[float, str] | None:
        for at, routing_state, reason in self.routes(node_id):
            if at >= after and routing_state == state:
                return at, reason
        return None
