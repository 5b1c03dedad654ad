"""The node's set of allocations: level-triggered apply, reports, adoption.

Design
------
:class:`Allocations` keeps one :class:`~node_agent.supervisor.WorkerHandle`
per allocation id. ``apply()`` takes the complete desired set: it starts a
handle for each wanted allocation it lacks, stops each one not wanted, and
never touches one that is wanted and present: a running worker is never
restarted, and a FAILED one stays FAILED (no retry loop through
re-assignment). An allocation wanted again while it is still STOPPING is
started afresh once it is STOPPED. A STOPPED handle stays in the list until
``forget_reported()`` confirms a report carried it, so the control plane sees
STOPPED once and then absence. A worker that stopped on its own (someone
sent it SIGTERM: it drained and exited 0) while its allocation is still in
the applied desired set is started again ``restart_backoff[0]`` after a
report carried its STOPPED (or after ``UNREPORTED_RESTART_S`` with no
stream): the control plane sees STOPPING, STOPPED, then STARTING and STARTED.

Adoption (``adopt_existing``, once at agent start): every
``DIR/workers/<id>.json`` left by a previous agent names a worker pid and
port. The worker is adopted (a handle starting in STARTED, same pid) when the
pid is alive, is really that allocation's worker (its command line names the
allocation's ready file, which guards against pid reuse) and answers health.
A worker that is ours but unusable is killed, so a node never runs two
workers for one allocation; stale files are removed. So is a worker that no
state file names (the previous agent died between spawning it and writing
the file): a process whose --ready-file lies in DIR/workers and that was not
adopted is killed before anything new starts.

GPUs: an allocation whose resources ask for N GPUs gets the first N of the
node's devices (``gpu_devices``) that no other live handle holds; the worker
sees them as CUDA_VISIBLE_DEVICES (and onnxruntime then puts the CUDA
provider first when it has one). The scheduler never places more GPUs than
a node offers, so a shortage here (e.g. an agent restarted with fewer
--gpus) fails the allocation with the reason. Adopted workers keep theirs.

Concurrency model
-----------------
Only touched from the agent's asyncio loop. Handle callbacks arrive
synchronously; restarts of re-wanted allocations are scheduled with
``call_soon`` so that no handle is created inside another's transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence

from google.protobuf import json_format

from modelfleet.v1 import agent_pb2, common_pb2
from node_agent.procs import cmdline, connect_address, kill, pid_alive, probe_health, workers_under
from node_agent.supervisor import AdoptedWorker, ModelFetcher, SupervisorConfig, WorkerHandle, WorkerState

log = logging.getLogger(__name__)

ADOPT_HEALTH_TIMEOUT = 2.0
UNREPORTED_RESTART_S = 5.0  # a self-stopped worker is started again after this even with no stream to report on


def gpu_devices(count: int, visible: str | None) -> tuple[str, ...]:
    """The GPU device ids a node with `count` GPUs hands out.

    visible: the agent's own CUDA_VISIBLE_DEVICES (None if unset). When the
    operator restricted the agent to some devices, workers get ids from that
    list; otherwise 0 .. count-1. Each allocation gets its own devices."""
    if visible is not None and visible.strip() not in ("", "-1"):
        return tuple(d.strip() for d in visible.split(",") if d.strip())[:count]
    return tuple(str(i) for i in range(count))


class Allocations:
    """All allocations of this node, keyed by allocation id (see the module docstring)."""

    def __init__(self, *, config: SupervisorConfig, fetch_model: ModelFetcher, on_change: Callable[[], None]) -> None:
        self._config = config
        self._fetch_model = fetch_model
        self._notify = on_change
        self._handles: dict[str, WorkerHandle] = {}
        self._pending: dict[str, agent_pb2.AllocationSpec] = {}  # wanted again while STOPPING
        self._wanted: dict[str, agent_pb2.AllocationSpec] = {}  # the last applied desired set
        self._closing = False

    @property
    def handles(self) -> dict[str, WorkerHandle]:
        return dict(self._handles)

    def _changed(self, handle: WorkerHandle) -> None:
        aid = handle.allocation_id
        if handle.state is WorkerState.STOPPED and aid in self._pending and self._handles.get(aid) is handle:
            asyncio.get_running_loop().call_soon(self._start, self._pending.pop(aid))
        elif handle.state is WorkerState.STOPPED and not handle.stop_requested and aid in self._wanted:
            # started again once a report carried STOPPED (forget_reported), or without a stream after a while
            log.info("allocation %s: its worker stopped on its own; it is started again once that is reported", aid)
            fallback = max(UNREPORTED_RESTART_S, self._restart_delay)
            asyncio.get_running_loop().call_later(fallback, self._restart_stopped, handle)
        self._notify()

    @property
    def _restart_delay(self) -> float:
        return self._config.restart_backoff[0] if self._config.restart_backoff else 1.0

    def _restart_stopped(self, handle: WorkerHandle) -> None:
        """Start a still-wanted allocation whose worker was stopped outside the agent."""
        aid = handle.allocation_id
        current = self._handles.get(aid)
        if self._closing or aid not in self._wanted or current not in (None, handle):
            return  # shutting down, no longer wanted, or already started again by an assignment
        self._start(self._wanted[aid])

    def _gpus_for(self, spec: agent_pb2.AllocationSpec) -> tuple[tuple[str, ...], str]:
        """(device ids, problem): the first free devices for spec, or why there are not enough."""
        wanted = max(0, spec.resources.gpus)
        if not wanted:
            return (), ""
        used = {g for h in self._handles.values() if h.state is not WorkerState.STOPPED for g in h.gpu_ids}
        devices = self._config.gpu_devices
        free = [d for d in devices if d not in used]
        if len(free) < wanted:
            return (), f"needs {wanted} GPU(s); {len(free)} of {len(devices)} free on this node"
        return tuple(free[:wanted]), ""

    def _start(self, spec: agent_pb2.AllocationSpec, adopted: AdoptedWorker | None = None) -> None:
        if self._closing:
            return
        gpu_ids, problem = ((), "") if adopted else self._gpus_for(spec)
        handle = WorkerHandle(
            spec,
            config=self._config,
            fetch_model=self._fetch_model,
            on_change=self._changed,
            adopted=adopted,
            gpu_ids=gpu_ids,
            start_problem=problem,
        )
        self._handles[spec.allocation_id] = handle
        handle.start()
        self._notify()

    def apply(self, specs: Sequence[agent_pb2.AllocationSpec]) -> None:
        """Make the desired set `specs` true (idempotent; ignored once shutting down)."""
        if self._closing:
            return
        wanted = {spec.allocation_id: spec for spec in specs}
        self._wanted = dict(wanted)
        for aid, handle in list(self._handles.items()):
            if aid not in wanted:
                self._pending.pop(aid, None)
                handle.stop()
        for aid, spec in wanted.items():
            have = self._handles.get(aid)
            if have is None or have.state is WorkerState.STOPPED:
                self._start(spec)
            elif have.state is WorkerState.STOPPING:
                self._pending[aid] = spec
            elif have.spec != spec:
                log.info("allocation %s: spec changed; the running worker is kept (allocations are immutable)", aid)

    def reports(self) -> list[agent_pb2.AllocationReport]:
        return [handle.report() for handle in self._handles.values()]

    def forget_reported(self, reports: Sequence[agent_pb2.AllocationReport]) -> None:
        """Drop STOPPED handles once a report that carried them was sent."""
        for rep in reports:
            handle = self._handles.get(rep.allocation_id)
            if rep.routing_state == common_pb2.ROUTING_STATE_STOPPED and handle and handle.state is WorkerState.STOPPED:
                del self._handles[rep.allocation_id]
                if not handle.stop_requested and rep.allocation_id in self._wanted:
                    asyncio.get_running_loop().call_later(self._restart_delay, self._restart_stopped, handle)

    async def stats(self, *, timeout: float) -> list[agent_pb2.AllocationStats]:
        """Statistics of every STARTED worker that answers within timeout."""
        started = [h for h in self._handles.values() if h.state is WorkerState.STARTED]
        results = await asyncio.gather(*(h.stats(timeout=timeout) for h in started))
        return [r for r in results if r is not None]

    async def shutdown(self, *, announce: Callable[[], Awaitable[None]] | None = None) -> None:
        """Stop every worker (SIGTERM, drain, SIGKILL) and wait until none is left.

        Args:
            announce: awaited once every allocation is STOPPING and before any
                worker is signalled (the agent reports STOPPING there).
        """
        self._closing = True
        self._pending.clear()
        handles = list(self._handles.values())
        release = asyncio.Event()
        for handle in handles:
            handle.stop(hold=release)
        try:
            if announce is not None:
                await announce()
        finally:
            release.set()
        await asyncio.gather(*(h.wait() for h in handles))

    async def adopt_existing(self) -> list[str]:
        """Adopt the live, healthy workers a previous agent left; clean up the rest.

        Returns:
            The adopted allocation ids.
        """
        workers = self._config.workers_dir
        workers.mkdir(mode=0o700, parents=True, exist_ok=True)
        adopted: list[str] = []
        for path in sorted(workers.glob("*.json")):
            aid, ready = path.stem, path.with_suffix(".ready")
            try:
                data = json.loads(path.read_text())
                spec = json_format.ParseDict(data["allocation"], agent_pb2.AllocationSpec())
                pid, port = int(data["pid"]), int(data.get("port") or 0)
            except (OSError, ValueError, KeyError, TypeError, json_format.ParseError) as exc:
                log.warning("removing unreadable worker state %s: %s", path, exc)
                path.unlink(missing_ok=True)
                continue
            ours = spec.allocation_id == aid and pid_alive(pid) and str(ready) in cmdline(pid)
            if ours and not port:  # the previous agent died before it saw the ready file
                with contextlib.suppress(OSError, ValueError):
                    port = int(json.loads(ready.read_text()).get("port", 0))
            problem = "not running" if not ours else None if port else "not ready"
            if problem is None:
                address = connect_address(self._config.worker_host, port)
                problem = await probe_health(address, timeout=ADOPT_HEALTH_TIMEOUT, channel=self._config.security.channel)
            if problem is None:
                info = AdoptedWorker(
                    pid=pid,
                    port=port,
                    started_at=float(data.get("started_at") or time.time()),
                    log_offset=int(data.get("log_offset") or 0),
                    restarts=int(data.get("restarts") or 0),
                    gpu_ids=tuple(str(g) for g in data.get("gpu_ids") or ()),
                )
                log.info("allocation %s: adopted running worker pid %d on port %d", aid, pid, port)
                self._start(spec, adopted=info)
                adopted.append(aid)
                continue
            log.warning("allocation %s: not adopting worker pid %d (%s)", aid, pid, problem)
            if ours:  # our orphan, but unusable: never leave a second worker behind
                await _kill_and_wait(pid)
            path.unlink(missing_ok=True)
            ready.unlink(missing_ok=True)
        adopted_pids = {self._handles[aid].pid for aid in adopted}
        for pid, ready in workers_under(workers.resolve()).items():
            if pid not in adopted_pids:
                log.warning("allocation %s: killing worker pid %d that no state file names "
                            "(its agent died while starting it)", ready.stem, pid)  # fmt: skip
                await _kill_and_wait(pid)
        for leftover in [*workers.glob("*.ready"), *workers.glob("*.token"), *workers.glob("*.tmp")]:
            if leftover.stem not in self._handles:
                leftover.unlink(missing_ok=True)
        return adopted


async def _kill_and_wait(pid: int) -> None:
    """SIGKILL a worker's process group and wait (up to 5 s) until it is gone."""
    kill(pid, signal.SIGKILL, group=True)
    for _ in range(50):
        if not pid_alive(pid):
            break
        await asyncio.sleep(0.1)
