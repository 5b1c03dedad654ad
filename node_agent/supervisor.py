"""Supervision of inference worker processes: one WorkerHandle per allocation.

Design
------
Every allocation runs in its own ``python -m node_agent.worker`` process, so a
crashing or leaking model can take neither the agent nor the other models
down, and stopping an allocation frees all of its memory. A
:class:`WorkerHandle` owns one allocation's lifecycle::

    STARTING ──▶ STARTED ──▶ STOPPING ──▶ STOPPED
       │  ▲         │            ▲
       │  └ RESTARTING ◀┘        │  (stop() from any live state)
       └──────────▶ FAILED ──────┘  (removed from the desired set)

STARTING covers the model download (cached by sha256), the spawn and the
model load; STARTED begins when the worker writes its ready file. Exit code 3
(load error) and 2 (bad arguments) are permanent: FAILED at once, no retry.
Any other exit, and ``health_failures`` failed health checks in a row, is a
crash: the worker is restarted after ``restart_backoff[i]`` (RESTARTING,
reported as STARTING) until the backoff list is spent, then FAILED with the
exit summary and the last stderr lines. The crash budget refills after
``restart_reset_after`` seconds of uninterrupted service (node_agent.exits
classifies exits).

A worker that someone else sends SIGTERM drains: it turns its health
NOT_SERVING at once, which a ``Health.Watch`` stream tells the handle, so the
route is STOPPING (the gateway stops routing) while queued calls finish; its
clean exit (code 0) is then STOPPED, not a crash. Whether to run it again
is the caller's decision (node_agent.allocations restarts a wanted one).

While a process exists it is described in ``DIR/workers/<id>.json`` (spec,
pid, port, started_at, log offset; mode 0600, as the spec holds the worker
token) so that a restarted agent can adopt it (node_agent.allocations); an
adopted handle starts in STARTED. An allocation with a worker token has it
in ``DIR/workers/<id>.token`` (0600) for its worker; security arguments and
the channel to the worker come from node_agent.worker_security.

The states, their transition table and SupervisorConfig live in
node_agent.worker_lifecycle; the health checks and the drain watch of a
STARTED worker in node_agent.healthwatch.

Concurrency model
-----------------
Everything runs on the agent's one asyncio loop; there are no threads and no
locks. Each handle owns exactly one task (``_lifecycle``), the only code that
spawns, signals or waits for its process. ``stop()`` is synchronous: it moves
the state to STOPPING and sets an event that every await of the lifecycle
races against, so a stop is honoured in any phase (download, load, serving,
restart backoff). Own children are reaped by asyncio's child watcher through
``Process.wait()``; adopted workers (children of a previous agent) are not
ours, so their exit is observed by polling ``/proc``. State changes call
``on_change`` synchronously (never awaited) so the agent can coalesce them
into one report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import site
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from modelfleet.v1 import agent_pb2, common_pb2, worker_pb2, worker_pb2_grpc
from node_agent.exits import MAX_REASON_CHARS, Exit, exit_outcome
from node_agent.healthwatch import HealthWatch, Verdict
from node_agent.procs import WorkerProcess, advertised_address, connect_address, kill, pid_alive
from node_agent.worker_lifecycle import ROUTING_STATE
from node_agent.worker_lifecycle import TRANSITIONS as TRANSITIONS
from node_agent.worker_lifecycle import AdoptedWorker as AdoptedWorker
from node_agent.worker_lifecycle import InvalidTransition as InvalidTransition
from node_agent.worker_lifecycle import ModelFetcher as ModelFetcher
from node_agent.worker_lifecycle import PermanentStartError as PermanentStartError
from node_agent.worker_lifecycle import SupervisorConfig as SupervisorConfig
from node_agent.worker_lifecycle import WorkerState as WorkerState
from node_agent.worker_security import batching_flags, declared_specs, token_metadata, write_private

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_LOG_BYTES = 10 * 1024 * 1024
_ALLOCATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])  # the directory that holds node_agent/
_SITE_DIRS = frozenset(str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()])


class WorkerHandle:
    """One allocation's worker process and its lifecycle; see the module docstring."""

    def __init__(
        self,
        spec: agent_pb2.AllocationSpec,
        *,
        config: SupervisorConfig,
        fetch_model: ModelFetcher,
        on_change: Callable[[WorkerHandle], None],
        adopted: AdoptedWorker | None = None,
        gpu_ids: tuple[str, ...] = (),  # the worker's CUDA_VISIBLE_DEVICES
        start_problem: str = "",  # if set, FAILED at once with this reason
    ) -> None:
        self.spec = spec
        self.gpu_ids = adopted.gpu_ids if adopted else gpu_ids
        self._start_problem = start_problem
        self.allocation_id = spec.allocation_id
        self._config = config
        self._fetch_model = fetch_model
        self._on_change = on_change
        self._adopted = adopted
        self.state = WorkerState.STARTED if adopted else WorkerState.STARTING
        self.reason = ""
        self.pid = adopted.pid if adopted else 0
        self.port = adopted.port if adopted else 0
        self.started_at: float | None = adopted.started_at if adopted else None
        self.restarts = adopted.restarts if adopted else 0
        self.spawns = 0
        self._log_offset = adopted.log_offset if adopted else 0
        self._stop = asyncio.Event()
        self._stopped_reason = "stopped"  # the STOPPED reason once the process is gone
        self._hold: asyncio.Event | None = None  # see stop()
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        workers = config.workers_dir
        self.state_file = workers / f"{self.allocation_id}.json"
        self.ready_file = workers / f"{self.allocation_id}.ready"
        self.log_file = workers / f"{self.allocation_id}.log"
        self.token_file = workers / f"{self.allocation_id}.token"

    # ---- public API -----------------------------------------------------------------

    @property
    def address(self) -> str:
        return advertised_address(self._config.worker_host, self.port) if self.port else ""

    def start(self) -> None:
        """Begin the lifecycle task (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._lifecycle(), name=f"worker {self.allocation_id}")

    def stop(self, *, hold: asyncio.Event | None = None) -> None:
        """Ask the worker to stop: STOPPING now, STOPPED once no process is left.

        Args:
            hold: if given, a running worker is signalled only once it is set, so
                the caller can announce STOPPING before the worker refuses calls.
        """
        if self._stop.is_set() or self.state is WorkerState.STOPPED:
            return
        self._hold = hold
        self._stop.set()
        self._stopped_reason = "stopped"
        if self.state is WorkerState.FAILED:
            self._transition(WorkerState.STOPPED, self.reason)
        elif self.state is not WorkerState.STOPPING:  # it may be draining on its own already
            self._transition(WorkerState.STOPPING, "stopping")

    @property
    def stop_requested(self) -> bool:
        """True once stop() was called (False for a worker that stopped on its own)."""
        return self._stop.is_set()

    async def wait(self) -> None:
        """Wait until the lifecycle task has ended (STOPPED or FAILED)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    def report(self) -> agent_pb2.AllocationReport:
        rep = agent_pb2.AllocationReport(
            allocation_id=self.allocation_id,
            deployment_id=self.spec.deployment_id,
            routing_state=ROUTING_STATE[self.state],
            reason=self.reason,
            worker_pid=self.pid,
            restarts=self.restarts,
        )
        if self.state is WorkerState.STARTED:
            rep.worker_address = self.address
        if self.started_at is not None and self.state is WorkerState.STARTED:
            rep.started_at.FromNanoseconds(int(self.started_at * 1e9))
        return rep

    async def stats(self, *, timeout: float) -> agent_pb2.AllocationStats | None:
        """The worker's inference statistics, or None when not STARTED or it did not answer."""
        channel = self._channel
        if self.state is not WorkerState.STARTED or channel is None:
            return None
        try:
            reply = await worker_pb2_grpc.WorkerControlStub(channel).GetWorkerStats(
                worker_pb2.GetWorkerStatsRequest(), timeout=timeout, metadata=token_metadata(self.spec)
            )
        except grpc.aio.AioRpcError as exc:
            log.debug("allocation %s: stats failed: %s", self.allocation_id, exc.code().name)
            return None
        return agent_pb2.AllocationStats(allocation_id=self.allocation_id, stats=reply.stats)

    # ---- lifecycle --------------------------------------------------------------------

    def _transition(self, to: WorkerState, reason: str = "") -> None:
        if (self.state, to) not in TRANSITIONS:
            raise InvalidTransition(f"allocation {self.allocation_id}: {self.state.value} -> {to.value}")
        log.info("allocation %s: %s -> %s %s", self.allocation_id, self.state.value, to.value, reason)
        self.state = to
        self.reason = reason[-MAX_REASON_CHARS:]
        self._on_change(self)

    def _set_reason(self, reason: str) -> None:
        self.reason = reason[-MAX_REASON_CHARS:]
        self._on_change(self)

    def _fail(self, reason: str) -> None:
        if self.state in (WorkerState.STARTING, WorkerState.STARTED, WorkerState.RESTARTING):
            self._transition(WorkerState.FAILED, reason)

    async def _lifecycle(self) -> None:
        # Cancellation (the agent exiting without a graceful shutdown) propagates untouched:
        # the worker and its state file stay for the next agent to adopt.
        try:
            await self._supervise()
        except Exception as exc:  # a bug must not leave the allocation in limbo
            log.exception("allocation %s: supervision failed", self.allocation_id)
            if self.pid and pid_alive(self.pid):
                kill(self.pid, signal.SIGKILL, group=True)
            self._fail(f"agent error: {exc!r}")
        self._process_gone()
        if self.state is WorkerState.STOPPING:
            self._transition(WorkerState.STOPPED, self._stopped_reason)

    async def _supervise(self) -> None:
        problem = self._check_spec()
        if problem:
            self._fail(problem)
            return
        model: Path | None = None
        consecutive = 0
        while True:
            if self._adopted is not None:
                self._adopted = None
                outcome = await self._serve(WorkerProcess(self.pid), started=time.monotonic())
            else:
                model = model or await self._fetch()
                if model is None:
                    return
                outcome = await self._run_once(model)
            self._process_gone()
            if self._stop.is_set():
                return
            if outcome.stopped:  # a clean exit after someone else's SIGTERM: stopped, not crashed
                self._stopped_reason = outcome.reason
                if self.state is not WorkerState.STOPPING:
                    self._transition(WorkerState.STOPPING, outcome.reason)
                return
            if outcome.permanent:
                self._fail(outcome.reason)
                return
            reset = outcome.uptime >= self._config.restart_reset_after
            consecutive = 1 if reset else consecutive + 1
            backoff = self._config.restart_backoff
            if consecutive > len(backoff):
                gave_up = f" (gave up after {len(backoff)} restarts)" if backoff else ""
                self._fail(Exit(outcome.summary + gave_up, outcome.stderr).reason)
                return
            delay = backoff[consecutive - 1]
            self.restarts += 1
            self._transition(
                WorkerState.RESTARTING, f"{outcome.reason} (restart {consecutive} of {len(backoff)} in {delay:g} s)"
            )
            if await self._sleep_or_stop(delay):
                return
            self._transition(WorkerState.STARTING, f"restarting after: {outcome.summary}")

    def _check_spec(self) -> str:
        if self._start_problem:
            return self._start_problem
        if not _ALLOCATION_ID.match(self.allocation_id):
            return f"invalid allocation_id {self.allocation_id!r}"
        if self._adopted is None and self.spec.format == common_pb2.MODEL_FORMAT_UNSPECIFIED:
            return "invalid allocation: format is unspecified"
        return ""

    async def _fetch(self) -> Path | None:
        """The model file, downloading it if needed; None if stopped or FAILED."""
        delay = 1.0
        while True:
            try:
                done, path = await self._race(self._fetch_model(self.spec))
            except PermanentStartError as exc:
                self._fail(str(exc))
                return None
            except Exception as exc:  # transient (control plane unreachable, ...): retry while wanted
                log.warning("allocation %s: model download failed: %s", self.allocation_id, exc)
                self._set_reason(f"model download failed, retrying in {delay:.1f} s: {exc}")
                if await self._sleep_or_stop(delay):
                    return None
                delay = min(delay * 1.6, 30.0)
                continue
            return path if done else None

    async def _race(self, aw: Awaitable[T]) -> tuple[bool, T | None]:
        """Await aw unless stop() comes first (then aw is cancelled): (finished, result)."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
        if not task.done():  # stopped first: let the cancelled work unwind
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return False, None
        return True, task.result()

    async def _sleep_or_stop(self, delay: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        return self._stop.is_set()

    def _argv(self, model: Path) -> list[str]:
        spec, cfg = self.spec, self._config
        fmt = common_pb2.ModelFormat.Name(spec.format).removeprefix("MODEL_FORMAT_").lower()
        return [
            cfg.python, "-m", cfg.worker_module,
            "--model", str(model), "--format", fmt,
            "--name", spec.deployment_id, "--version", spec.variant, "--model-version", str(spec.model_version),
            "--inference-threads", str(max(1, spec.inference_threads)),
            "--model-threads", str(max(1, spec.model_threads)),
            "--queue-capacity", str(spec.queue_capacity or 1024),
            "--host", cfg.worker_host, "--port", "0",
            "--ready-file", str(self.ready_file),
            "--drain-timeout", f"{cfg.drain_timeout:g}",
            *declared_specs(spec),
            *cfg.security.argv(spec, token_file=self.token_file, credentials_file=cfg.credentials_file),
            *batching_flags(spec),
            *(["--metrics-port", "0"] if cfg.worker_metrics else []),
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        """The agent's environment, the allocation's env (never logged), then
        CUDA_VISIBLE_DEVICES: its GPUs (none, on a node with GPUs, if it has none)."""
        env = dict(os.environ)
        env.pop("MODELFLEET_TOKEN", None)  # the agent's own key is not the worker's business
        env.update(self.spec.env)
        if self.gpu_ids or self._config.gpu_devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpu_ids)
        if _PROJECT_ROOT not in _SITE_DIRS:  # a source checkout: run the worker from the agent's own tree
            env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"  # keep stdout and stderr lines in order in the log
        return env

    async def _run_once(self, model: Path) -> Exit:
        """Spawn one worker process, wait until it is ready, then serve until it ends."""
        self._config.workers_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        if self.spec.worker_token:
            write_private(self.token_file, self.spec.worker_token.encode())
        with contextlib.suppress(OSError):
            if self.log_file.stat().st_size > MAX_LOG_BYTES:
                os.replace(self.log_file, self.log_file.with_suffix(".log.1"))
        self.spawns += 1
        with open(self.log_file, "ab") as out:
            header = f"--- modelfleet-agent: start {self.spawns} of allocation {self.allocation_id} at {time.ctime()}\n"
            out.write(header.encode())
            out.flush()
            self._log_offset = out.tell()
            try:
                child = await asyncio.create_subprocess_exec(
                    *self._argv(model),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=self._env(),
                    start_new_session=True,  # survives the agent; own process group to kill
                )
            except OSError as exc:
                return Exit(f"cannot start worker: {exc}", permanent=True)
        proc = WorkerProcess(child.pid, child)
        self.pid, self.port, self.started_at = child.pid, 0, None
        self._write_state()
        self._on_change(self)
        spawned = time.monotonic()
        exit_task = asyncio.ensure_future(proc.wait())
        try:
            while not exit_task.done() and not self._stop.is_set():
                port = self._read_ready(child.pid)
                if port:
                    self.port, self.started_at = port, time.time()
                    self._write_state()
                    self._transition(WorkerState.STARTED)
                    return await self._serve(proc, started=time.monotonic(), exit_task=exit_task)
                if time.monotonic() - spawned > self._config.start_timeout:
                    proc.signal(signal.SIGKILL, group=True)
                    await exit_task
                    return Exit(f"worker did not become ready within {self._config.start_timeout:g} s")
                await asyncio.wait({exit_task}, timeout=0.05)
            if self._stop.is_set() and not exit_task.done():
                await self._terminate(proc, exit_task)
                return Exit(stopped=True)
            return exit_outcome(exit_task.result(), log_file=self.log_file, log_offset=self._log_offset, uptime=0.0)
        finally:
            exit_task.cancel()

    def _read_ready(self, pid: int) -> int:
        try:
            data = json.loads(self.ready_file.read_text())
        except (OSError, ValueError):
            return 0
        if int(data.get("pid", pid)) != pid:
            return 0
        return int(data.get("port", 0))

    async def _serve(
        self, proc: WorkerProcess, *, started: float, exit_task: asyncio.Future[int | None] | None = None
    ) -> Exit:
        """Health-check a STARTED worker until it exits, fails its checks or is stopped.

        A worker that starts draining on its own (someone sent it SIGTERM) is
        STOPPING at once, so the gateway stops routing to it (node_agent.healthwatch)."""
        cfg = self._config
        if exit_task is None:
            exit_task = asyncio.ensure_future(proc.wait())
        stop_task = asyncio.ensure_future(self._stop.wait())
        self._channel = cfg.security.channel(connect_address(cfg.worker_host, self.port))
        watch = HealthWatch(
            self._channel, interval=cfg.health_interval, timeout=cfg.health_timeout,
            failures=cfg.health_failures, allocation_id=self.allocation_id,
        )  # fmt: skip
        try:
            while True:
                waiters: set[asyncio.Future[Any]] = {exit_task, stop_task, *watch.waiters()}
                done, _ = await asyncio.wait(waiters, timeout=watch.timeout(), return_when=asyncio.FIRST_COMPLETED)
                if exit_task in done:
                    return exit_outcome(
                        exit_task.result(), log_file=self.log_file, log_offset=self._log_offset,
                        uptime=time.monotonic() - started, draining=watch.draining,
                    )  # fmt: skip
                if stop_task in done:
                    await self._terminate(proc, exit_task)
                    return Exit(stopped=True)
                verdict = watch.step(done, serving=self.state is WorkerState.STARTED)
                if verdict is Verdict.DRAINING:
                    self._transition(WorkerState.STOPPING, "worker is draining: stopped outside the agent")
                elif verdict is Verdict.UNHEALTHY:
                    proc.signal(signal.SIGKILL, group=True)
                    await exit_task
                    return Exit(
                        f"worker failed {watch.failures} health checks in a row ({watch.last_error})",
                        uptime=time.monotonic() - started,
                    )
        finally:
            watch.close()
            for task in (exit_task, stop_task):
                task.cancel()
            channel, self._channel = self._channel, None
            await channel.close()

    async def _terminate(self, proc: WorkerProcess, exit_task: asyncio.Future[int | None]) -> None:
        """SIGTERM (the worker drains), then SIGKILL to its process group after the drain timeout."""
        if self._hold is not None:
            await self._hold.wait()
        proc.signal(signal.SIGTERM)
        done, _ = await asyncio.wait({exit_task}, timeout=self._config.drain_timeout + self._config.kill_grace)
        if not done:
            log.warning("allocation %s: worker %d did not exit after SIGTERM; killing it", self.allocation_id, proc.pid)
            proc.signal(signal.SIGKILL, group=True)
            await exit_task

    def _write_state(self) -> None:
        """Describe the running process in DIR/workers/<id>.json (atomically) for adoption."""
        state: dict[str, Any] = {
            "allocation": json_format.MessageToDict(self.spec, preserving_proto_field_name=True),
            "pid": self.pid,
            "port": self.port,
            "started_at": self.started_at,
            "log_offset": self._log_offset,
            "restarts": self.restarts,
            "gpu_ids": list(self.gpu_ids),
        }
        write_private(self.state_file, json.dumps(state).encode())  # it holds the worker token

    def _process_gone(self) -> None:
        """No process runs for this allocation any more: forget it and its files."""
        self.pid, self.port, self.started_at = 0, 0, None
        if _ALLOCATION_ID.match(self.allocation_id):  # never unlink paths built from a bad id
            self.state_file.unlink(missing_ok=True)
            self.ready_file.unlink(missing_ok=True)
            self.token_file.unlink(missing_ok=True)
