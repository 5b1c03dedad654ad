"""Integration tests of the node agent (`python -m node_agent.main`).

A small fake control plane runs inside the test: a real grpc.aio server on
127.0.0.1 (its own event loop in a background thread) implementing
AgentControl.Connect and ModelRegistry.DownloadModel from a dict of blobs.
The test drives assignments through it and reads what the agent sends. The
agent runs as a real subprocess and starts real inference workers. Every
wait polls with a deadline on what the agent reported; nothing sleeps to
wait for a state.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import modelbuild  # tests/ is on sys.path (pythonpath in pyproject.toml)
import numpy as np
import pytest
from google.protobuf import duration_pb2

from modelfleet.inference import grpc_service_pb2, grpc_service_pb2_grpc
from modelfleet.v1 import agent_pb2, agent_pb2_grpc, common_pb2, models_pb2, models_pb2_grpc
from node_agent.agent import Backoff
from node_agent.procs import pid_alive  # zombies (orphans waiting for init) count as gone
from node_agent.supervisor import TRANSITIONS, InvalidTransition, SupervisorConfig, WorkerHandle, WorkerState

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[3]
HEARTBEAT = 0.2
STARTED_TIMEOUT = 60.0
Report = agent_pb2.AllocationReport
STARTING, STARTED = common_pb2.ROUTING_STATE_STARTING, common_pb2.ROUTING_STATE_STARTED
STOPPING, STOPPED = common_pb2.ROUTING_STATE_STOPPING, common_pb2.ROUTING_STATE_STOPPED
FAILED = common_pb2.ROUTING_STATE_FAILED


# ---- fake control plane ----------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    session: int
    message: agent_pb2.AgentMessage


class FakeControlPlane:
    """AgentControl + ModelRegistry.DownloadModel for one agent, driven from the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.blobs: dict[str, bytes] = {}  # model_id -> bytes served by DownloadModel
        self.downloads: list[str] = []
        self.received: list[Received] = []
        self.ended: list[int] = []  # sessions whose stream has ended
        self.assignment: agent_pb2.Assignment | None = None
        self.port = 0
        self._cond = threading.Condition()
        self._sessions = 0
        self._outbox: asyncio.Queue[agent_pb2.ControlMessage | None] | None = None
        self._server: grpc.aio.Server | None = None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self, port: int = 0) -> int:
        async def start() -> int:
            server = grpc.aio.server()
            agent_pb2_grpc.add_AgentControlServicer_to_server(_AgentControl(self), server)
            models_pb2_grpc.add_ModelRegistryServicer_to_server(_Registry(self), server)
            bound = int(server.add_insecure_port(f"127.0.0.1:{port}"))
            await server.start()
            self._server = server
            return bound

        self.port = self._run(start())
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._run(self._server.stop(grace=0))
            self._server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    def assign(self, generation: int, specs: list[agent_pb2.AllocationSpec]) -> int:
        """Push a complete desired set; returns a mark for waits on what follows."""
        mark = self.mark()
        self.assignment = agent_pb2.Assignment(generation=generation, allocations=specs)
        message = agent_pb2.ControlMessage(assignment=self.assignment)
        self.loop.call_soon_threadsafe(self._send, message)
        return mark

    def _send(self, message: agent_pb2.ControlMessage) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(message)

    def mark(self) -> int:
        with self._cond:
            return len(self.received)

    # recorded by the server side
    def _record(self, session: int, message: agent_pb2.AgentMessage) -> None:
        with self._cond:
            self.received.append(Received(session, message))
            self._cond.notify_all()

    def _end(self, session: int) -> None:
        with self._cond:
            self.ended.append(session)
            self._cond.notify_all()

    # waits (test thread)
    def wait(self, what: str, found: Callable[[], object], timeout: float) -> object:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = found()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [r.message.WhichOneof("kind") for r in self.received[-20:]]
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last messages: {kinds}")
                self._cond.wait(min(left, 0.2))

    def messages(self, kind: str, since: int = 0) -> list[Received]:
        return [r for r in self.received[since:] if r.message.WhichOneof("kind") == kind]

    def reports(self, since: int = 0) -> list[tuple[Received, list[Report]]]:
        """(message, allocations) of every register and report since the mark."""
        kinds = ("register", "report")
        return [
            (r, list(getattr(r.message, kind).allocations))
            for r in self.received[since:]
            if (kind := r.message.WhichOneof("kind")) in kinds
        ]

    def _first(self, aid: str, state: int, since: int) -> tuple[int, Report] | None:
        """(index in `received`, report) of the first register/report with aid in state."""
        for index, r in enumerate(self.received[since:], start=since):
            kind = r.message.WhichOneof("kind")
            for rep in getattr(r.message, kind).allocations if kind in ("register", "report") else ():
                if rep.allocation_id == aid and rep.routing_state == state:
                    return index, rep
        return None

    def wait_state(self, aid: str, state: int, *, since: int, timeout: float = STARTED_TIMEOUT) -> Report:
        what = f"{aid} {common_pb2.RoutingState.Name(state)}"
        report: Report = self.wait(what, lambda: self._first(aid, state, since), timeout)[1]  # type: ignore[index]
        return report

    def seen_at(self, aid: str, state: int, *, since: int) -> int:
        """Index in `received` of the first register/report with aid in state (-1: none)."""
        found = self._first(aid, state, since)
        return found[0] if found else -1

    def wait_heartbeats(self, count: int, *, since: int, timeout: float = 30.0) -> list[Received]:
        return self.wait(  # type: ignore[return-value]
            f"{count} heartbeats", lambda: (hb := self.messages("heartbeat", since))[count - 1 :] and hb, timeout
        )


class _AgentControl(agent_pb2_grpc.AgentControlServicer):
    def __init__(self, cp: FakeControlPlane) -> None:
        self.cp = cp

    async def Connect(
        self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.ControlMessage]:
        cp = self.cp
        cp._sessions += 1
        session = cp._sessions
        outbox: asyncio.Queue[agent_pb2.ControlMessage | None] = asyncio.Queue()
        cp._outbox = outbox

        async def read() -> None:
            try:
                async for message in request_iterator:
                    cp._record(session, message)
                    if message.HasField("register"):
                        welcome = agent_pb2.Welcome(
                            node_id=message.register.node.node_id,
                            heartbeat_interval=duration_pb2.Duration(nanos=int(HEARTBEAT * 1e9)),
                            node_timeout=duration_pb2.Duration(seconds=2),
                        )
                        outbox.put_nowait(agent_pb2.ControlMessage(welcome=welcome))
                        if cp.assignment is not None:  # a real control plane resends the full set
                            outbox.put_nowait(agent_pb2.ControlMessage(assignment=cp.assignment))
            finally:
                outbox.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (message := await outbox.get()) is not None:
                yield message
        finally:
            reader.cancel()
            if cp._outbox is outbox:
                cp._outbox = None
            cp._end(session)


class _Registry(models_pb2_grpc.ModelRegistryServicer):
    def __init__(self, cp: FakeControlPlane) -> None:
        self.cp = cp

    async def DownloadModel(
        self, request: models_pb2.DownloadModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[models_pb2.DownloadModelResponse]:
        blob = self.cp.blobs.get(request.model_id)
        if blob is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_id} not found")
            return
        self.cp.downloads.append(request.model_id)
        sha = hashlib.sha256(blob).hexdigest()
        for offset in range(0, len(blob), 64 * 1024):
            chunk = blob[offset : offset + 64 * 1024]
            yield models_pb2.DownloadModelResponse(chunk=chunk, offset=offset, total_bytes=len(blob), sha256=sha)


# ---- the agent process -------------------------------------------------------------------


def wait_gone(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive after {timeout} s"
        time.sleep(0.05)


class AgentProcess(subprocess.Popen[bytes]):
    """`python -m node_agent.main` against the fake control plane, logging to `log`."""

    def __init__(self, data_dir: Path, port: int, log: Path) -> None:
        self.data_dir = data_dir
        with open(log, "ab") as out:
            super().__init__(
                [
                    sys.executable, "-m", "node_agent.main",
                    "--control-plane", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
                    "--label", "pool=test", "--label", "zone=a",
                    "--cpus", "3", "--memory", str(8 << 30),
                    "--drain-timeout", "2", "--log-level", "DEBUG",
                ],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip


StartAgent = Callable[[], AgentProcess]


@pytest.fixture
def cp() -> Iterator[FakeControlPlane]:
    plane = FakeControlPlane()
    plane.start()
    yield plane
    plane.close()


@pytest.fixture
def start_agent(cp: FakeControlPlane, tmp_path: Path) -> Iterator[StartAgent]:
    agents: list[AgentProcess] = []
    data_dir = tmp_path / "node"

    def start() -> AgentProcess:
        agent = AgentProcess(data_dir, cp.port, tmp_path / "agent.log")
        agents.append(agent)
        return agent

    yield start
    for agent in agents:  # leave nothing running, whatever the test did
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
    pids = {rep.worker_pid for _, reps in cp.reports() for rep in reps if rep.worker_pid}
    for pid in pids:
        if pid_alive(pid) and b"node_agent.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.killpg(pid, signal.SIGKILL)
    if (tmp_path / "agent.log").exists():
        print((tmp_path / "agent.log").read_text()[-20000:])


def add_model(cp: FakeControlPlane, tmp_path: Path, model_id: str, build: Callable[[Path], Path]) -> str:
    blob = build(tmp_path / f"{model_id}.bin").read_bytes()
    cp.blobs[model_id] = blob
    return hashlib.sha256(blob).hexdigest()


def spec(aid: str, model_id: str, sha: str, **kw: Any) -> agent_pb2.AllocationSpec:
    return agent_pb2.AllocationSpec(
        allocation_id=aid, deployment_id=model_id, variant="v1", model_id=model_id, model_version=1,
        model_sha256=sha, format=common_pb2.MODEL_FORMAT_ONNX, inference_threads=1, model_threads=1,
        queue_capacity=8, **kw,
    )  # fmt: skip


def infer_add(address: str, name: str) -> np.ndarray:
    x = np.array([[10.0, 20.0, 30.0, 40.0]], dtype=np.float32)
    request = grpc_service_pb2.ModelInferRequest(model_name=name)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(address) as channel:
        reply = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    if reply.raw_output_contents:
        return np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(1, 4)
    return np.array(reply.outputs[0].contents.fp32_contents, dtype=np.float32).reshape(1, 4)


def starts(data_dir: Path, aid: str) -> int:
    log = data_dir / "workers" / f"{aid}.log"
    return log.read_text().count("--- modelfleet-agent: start") if log.exists() else 0


# ---- tests -----------------------------------------------------------------------------------


def test_register_start_infer_keep_and_stop(cp: FakeControlPlane, start_agent: StartAgent, tmp_path: Path) -> None:
    sha = add_model(cp, tmp_path, "add", modelbuild.onnx_add)
    agent = start_agent()
    register = cp.wait("register", lambda: cp.messages("register"), 30)[0].message.register  # type: ignore[index]
    node = register.node
    assert node.node_id == (agent.data_dir / "node_id").read_text().strip()
    assert node.node_id.startswith("node-")
    assert dict(node.labels) == {"pool": "test", "zone": "a"}
    assert node.capacity.cpus == 3 and node.capacity.memory_bytes == 8 << 30 and node.capacity.gpus == 0
    assert node.hostname and node.agent_version
    assert register.applied_generation == 0 and not register.allocations

    mark = cp.assign(1, [spec("add-0", "add", sha, env={"MODELFLEET_TEST_ENV": "from-allocation"})])
    starting = cp.wait_state("add-0", STARTING, since=mark)
    started = cp.wait_state("add-0", STARTED, since=mark)
    assert starting.deployment_id == "add"
    assert cp.seen_at("add-0", STARTING, since=mark) < cp.seen_at("add-0", STARTED, since=mark)
    assert started.worker_address.startswith("127.0.0.1:") and started.worker_pid > 0
    assert started.HasField("started_at")
    assert b"MODELFLEET_TEST_ENV=from-allocation" in Path(f"/proc/{started.worker_pid}/environ").read_bytes().split(
        b"\0"
    )
    np.testing.assert_array_equal(infer_add(started.worker_address, "add"), [[11.0, 22.0, 33.0, 44.0]])
    assert cp.downloads == ["add"] and (agent.data_dir / "models" / sha).exists()

    # Heartbeats carry the started worker's statistics.
    def counted() -> bool:
        beats = cp.messages("heartbeat", mark)
        return any(
            s.allocation_id == "add-0" and s.stats.inference_count for b in beats for s in b.message.heartbeat.stats
        )

    cp.wait("heartbeat with its statistics", counted, 30)

    # The same set again with a higher generation: applied, nothing restarted.
    mark = cp.assign(2, [spec("add-0", "add", sha, env={"MODELFLEET_TEST_ENV": "from-allocation"})])
    cp.wait("report of generation 2", lambda: any(
        r.message.report.applied_generation == 2 for r in cp.messages("report", mark)), 30)  # fmt: skip
    # An older generation is ignored: heartbeats keep saying 2.
    mark = cp.assign(1, [])
    beats = cp.wait_heartbeats(3, since=mark)
    assert all(b.message.heartbeat.applied_generation == 2 for b in beats)
    for _, reps in cp.reports(mark):
        assert all(r.routing_state == STARTED and r.worker_pid == started.worker_pid for r in reps)
    assert starts(agent.data_dir, "add-0") == 1 and cp.downloads == ["add"]

    # A set without it: STOPPED (a quick drain may coalesce STOPPING away), then absent.
    mark = cp.assign(3, [])
    cp.wait_state("add-0", STOPPED, since=mark, timeout=10)
    wait_gone(started.worker_pid, timeout=5)
    mark = cp.mark()
    beats = cp.wait_heartbeats(2, since=mark)
    assert all(not b.message.heartbeat.stats for b in beats)
    cp.assign(4, [])
    cp.wait("an empty report", lambda: any(not r.message.report.allocations for r in cp.messages("report", mark)), 10)
    assert not list((agent.data_dir / "workers").glob("*.json"))


def test_load_errors_and_sha_mismatch_fail_without_retry(
    cp: FakeControlPlane, start_agent: StartAgent, tmp_path: Path
) -> None:
    good = add_model(cp, tmp_path, "add", modelbuild.onnx_add)
    warmup = add_model(cp, tmp_path, "warmup", modelbuild.onnx_warmup_fails)
    corrupt = add_model(cp, tmp_path, "corrupt", modelbuild.corrupt_file)
    agent = start_agent()
    cp.wait("register", lambda: cp.messages("register"), 30)
    specs = [spec("warmup-0", "warmup", warmup), spec("corrupt-0", "corrupt", corrupt),
             spec("mismatch-0", "add", "0" * 64), spec("add-0", "add", good)]  # fmt: skip
    mark = cp.assign(1, specs)
    for aid in ("warmup-0", "corrupt-0"):
        failed = cp.wait_state(aid, FAILED, since=mark)
        assert failed.reason.startswith("load error"), failed.reason
    mismatch = cp.wait_state("mismatch-0", FAILED, since=mark)
    assert mismatch.reason.startswith("model download: sha256 mismatch"), mismatch.reason
    assert "expected " + "0" * 64 in mismatch.reason
    started = cp.wait_state("add-0", STARTED, since=mark)  # the other deployment is unaffected
    assert infer_add(started.worker_address, "add").shape == (1, 4)

    # Well past the first restart backoff (1 s): still FAILED, exactly one start each.
    after = cp.mark()
    cp.wait_heartbeats(10, since=after)
    for _, reps in cp.reports(after):
        assert {r.allocation_id: r.routing_state for r in reps if r.allocation_id != "add-0"} == dict.fromkeys(
            ("warmup-0", "corrupt-0", "mismatch-0"), FAILED
        )
    assert [starts(agent.data_dir, aid) for aid in ("warmup-0", "corrupt-0", "mismatch-0")] == [1, 1, 0]
    assert not list((agent.data_dir / "models" / "tmp").iterdir())
    assert not (agent.data_dir / "models" / ("0" * 64)).exists()

    # Reassigning a failed allocation does not retry it either.
    mark = cp.assign(2, [spec("warmup-0", "warmup", warmup), spec("add-0", "add", good)])
    cp.wait("report of generation 2", lambda: any(
        r.message.report.applied_generation == 2 for r in cp.messages("report", mark)), 30)  # fmt: skip
    cp.wait_state("mismatch-0", STOPPED, since=mark, timeout=10)
    assert starts(agent.data_dir, "warmup-0") == 1


def test_worker_kill9_is_restarted(cp: FakeControlPlane, start_agent: StartAgent, tmp_path: Path) -> None:
    sha = add_model(cp, tmp_path, "add", modelbuild.onnx_add)
    agent = start_agent()
    mark = cp.assign(1, [spec("add-0", "add", sha)])
    first = cp.wait_state("add-0", STARTED, since=mark)
    mark = cp.mark()
    os.kill(first.worker_pid, signal.SIGKILL)
    restarting = cp.wait_state("add-0", STARTING, since=mark, timeout=10)
    assert "killed by signal SIGKILL" in restarting.reason and restarting.restarts == 1
    second = cp.wait_state("add-0", STARTED, since=mark)
    assert second.worker_pid != first.worker_pid and second.restarts == 1
    assert infer_add(second.worker_address, "add").shape == (1, 4)
    assert starts(agent.data_dir, "add-0") == 2

    # SIGTERM while the control plane is unreachable: no waiting for a stream, workers still stopped.
    cp.stop()
    cp.wait("the stream to end", lambda: cp.ended, 10)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0
    wait_gone(second.worker_pid, timeout=1)


def test_control_plane_restart_keeps_worker_then_sigterm_drains(
    cp: FakeControlPlane, start_agent: StartAgent, tmp_path: Path
) -> None:
    sha = add_model(cp, tmp_path, "add", modelbuild.onnx_add)
    agent = start_agent()
    mark = cp.assign(1, [spec("add-0", "add", sha)])
    started = cp.wait_state("add-0", STARTED, since=mark)

    cp.stop()
    cp.wait("the stream to end", lambda: cp.ended, 10)
    mark = cp.mark()
    port = cp.port
    assert cp.start(port) == port  # the same port, rebound
    register = cp.wait("re-register", lambda: cp.messages("register", mark), 30)[0]  # type: ignore[index]
    assert register.session == 2
    again = {r.allocation_id: r for r in register.message.register.allocations}
    assert again["add-0"].routing_state == STARTED and again["add-0"].worker_pid == started.worker_pid
    assert register.message.register.applied_generation == 1
    cp.wait_heartbeats(2, since=mark)
    assert pid_alive(started.worker_pid) and starts(agent.data_dir, "add-0") == 1
    assert infer_add(started.worker_address, "add").shape == (1, 4)

    mark = cp.mark()
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0
    cp.wait("the stream to close", lambda: 2 in cp.ended, 5)  # after everything the agent sent
    # STOPPING is announced before the worker is signalled, so it is never coalesced away.
    assert 0 <= cp.seen_at("add-0", STOPPING, since=mark) < cp.seen_at("add-0", STOPPED, since=mark)
    wait_gone(started.worker_pid, timeout=1)


def test_agent_kill9_then_restart_adopts_worker(cp: FakeControlPlane, start_agent: StartAgent, tmp_path: Path) -> None:
    sha = add_model(cp, tmp_path, "add", modelbuild.onnx_add)
    agent = start_agent()
    mark = cp.assign(1, [spec("add-0", "add", sha)])
    started = cp.wait_state("add-0", STARTED, since=mark)
    node_id = cp.messages("register")[0].message.register.node.node_id

    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=10)
    cp.wait("the stream to end", lambda: cp.ended, 10)
    assert pid_alive(started.worker_pid)

    mark = cp.mark()
    agent = start_agent()
    register = cp.wait("re-register", lambda: cp.messages("register", mark), 30)[0].message.register  # type: ignore[index]
    assert register.node.node_id == node_id
    adopted = {r.allocation_id: r for r in register.allocations}["add-0"]
    assert adopted.routing_state == STARTED and adopted.worker_pid == started.worker_pid
    assert adopted.worker_address == started.worker_address
    # The resent assignment (generation 1, newer than the fresh agent's 0) keeps it running.
    cp.wait("report of generation 1", lambda: any(
        r.message.report.applied_generation == 1 for r in cp.messages("report", mark)), 30)  # fmt: skip
    cp.wait_heartbeats(3, since=mark)
    for _, reps in cp.reports(mark):
        assert [(r.routing_state, r.worker_pid) for r in reps] == [(STARTED, started.worker_pid)]
    assert starts(agent.data_dir, "add-0") == 1
    assert infer_add(started.worker_address, "add").shape == (1, 4)

    # Graceful stop also stops an adopted worker (not a child of this agent).
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0
    wait_gone(started.worker_pid, timeout=1)
    assert not list((agent.data_dir / "workers").glob("*.json"))


# ---- in-process units: the lifecycle table, backoff, health checks and stop escalation ------------


def test_lifecycle_table_is_enforced_and_every_state_can_end(tmp_path: Path) -> None:
    async def fetch(_: agent_pb2.AllocationSpec) -> Path:
        raise AssertionError("not started")

    handle = WorkerHandle(
        spec("a-0", "a", "0" * 64), config=SupervisorConfig(data_dir=tmp_path), fetch_model=fetch, on_change=print
    )
    with pytest.raises(InvalidTransition):
        handle._transition(WorkerState.STOPPED)  # STARTING must pass through STOPPING
    assert handle.state is WorkerState.STARTING
    ends = {WorkerState.STOPPED}
    while len(ends) < len(WorkerState):  # every state reaches STOPPED
        grown = {a for a, b in TRANSITIONS if b in ends} | ends
        assert grown != ends, f"no way to STOPPED from {set(WorkerState) - ends}"
        ends = grown
    assert not [b for a, b in TRANSITIONS if a is WorkerState.STOPPED]


def test_reconnect_backoff_grows_with_jitter_caps_and_resets() -> None:
    backoff = Backoff()
    delays = [backoff.next() for _ in range(12)]
    for n, delay in enumerate(delays):
        base = min(30.0, 1.6**n)
        assert 0.8 * base <= delay <= 1.2 * base
    backoff.reset()
    assert 0.8 <= backoff.next() <= 1.2


def test_hung_worker_fails_health_checks_and_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    """SIGSTOP: health checks time out, so the worker is killed and restarted; a stopped worker ignores
    SIGTERM, so stop() sends SIGKILL after drain_timeout + kill_grace."""
    model = modelbuild.onnx_add(tmp_path / "add.onnx")
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    config = SupervisorConfig(
        data_dir=tmp_path / "node", health_interval=0.2, health_timeout=0.3, health_failures=2,
        restart_backoff=(0.1,), drain_timeout=0.5, kill_grace=0.2,
    )  # fmt: skip
    reasons: list[tuple[WorkerState, str]] = []

    async def fetch(_: agent_pb2.AllocationSpec) -> Path:
        return model

    async def until(what: str, cond: Callable[[], bool], timeout: float = STARTED_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        def changed(h: WorkerHandle) -> None:
            reasons.append((h.state, h.reason))

        handle = WorkerHandle(spec("add-0", "add", sha), config=config, fetch_model=fetch, on_change=changed)
        handle.start()
        await until("STARTED", lambda: handle.state is WorkerState.STARTED)
        first = handle.pid
        os.kill(first, signal.SIGSTOP)
        await until("a restarted worker", lambda: handle.state is WorkerState.STARTED and handle.pid != first)
        restarting = [r for s, r in reasons if s is WorkerState.RESTARTING]
        assert len(restarting) == 1 and "failed 2 health checks in a row" in restarting[0], reasons
        assert handle.restarts == 1 and handle.spawns == 2
        wait_gone(first, timeout=5)

        second = handle.pid
        os.kill(second, signal.SIGSTOP)
        began = time.monotonic()
        handle.stop()
        assert handle.state is WorkerState.STOPPING
        await asyncio.wait_for(handle.wait(), 10)
        took = time.monotonic() - began
        assert handle.report().routing_state == STOPPED
        assert 0.6 <= took < 5, took  # drain_timeout + kill_grace, then SIGKILL
        wait_gone(second, timeout=5)
        assert not handle.state_file.exists() and not handle.ready_file.exists()

    asyncio.run(scenario())
