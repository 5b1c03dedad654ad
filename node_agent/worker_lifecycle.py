"""The lifecycle of one allocation's worker and what supervising it takes:
WorkerState with its transition table (the only moves node_agent.supervisor
makes), the supervisor's timings and paths (SupervisorConfig), and the types
its callers hand in (AdoptedWorker, ModelFetcher, PermanentStartError).

Plain data: no I/O, no tasks; safe to share between tasks on the agent's loop.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from modelfleet.v1 import agent_pb2, common_pb2
from node_agent.worker_security import WorkerSecurity


class WorkerState(str, enum.Enum):
    """Lifecycle of one allocation on this node (see the module docstring)."""

    STARTING = "starting"  # downloading the model, spawning or loading it
    STARTED = "started"  # ready file seen; serving at `address`
    RESTARTING = "restarting"  # crashed; waiting out the backoff (reported as STARTING)
    STOPPING = "stopping"  # asked to stop; draining
    STOPPED = "stopped"  # no process left (terminal)
    FAILED = "failed"  # gave up; stays until the allocation is removed


_S = WorkerState
TRANSITIONS: frozenset[tuple[WorkerState, WorkerState]] = frozenset({
    (_S.STARTING, _S.STARTED), (_S.STARTING, _S.RESTARTING), (_S.STARTING, _S.FAILED), (_S.STARTING, _S.STOPPING),
    (_S.STARTED, _S.RESTARTING), (_S.STARTED, _S.FAILED), (_S.STARTED, _S.STOPPING),
    (_S.RESTARTING, _S.STARTING), (_S.RESTARTING, _S.FAILED), (_S.RESTARTING, _S.STOPPING),
    (_S.STOPPING, _S.STOPPED),
    (_S.FAILED, _S.STOPPED),
})  # fmt: skip
ROUTING_STATE: dict[WorkerState, common_pb2.RoutingState] = {
    _S.STARTING: common_pb2.ROUTING_STATE_STARTING,
    _S.RESTARTING: common_pb2.ROUTING_STATE_STARTING,
    _S.STARTED: common_pb2.ROUTING_STATE_STARTED,
    _S.STOPPING: common_pb2.ROUTING_STATE_STOPPING,
    _S.STOPPED: common_pb2.ROUTING_STATE_STOPPED,
    _S.FAILED: common_pb2.ROUTING_STATE_FAILED,
}


class InvalidTransition(RuntimeError):
    """A lifecycle change not in TRANSITIONS was attempted (a bug)."""


class PermanentStartError(Exception):
    """Raised by a model fetcher when retrying cannot help (sha mismatch, unknown model)."""


ModelFetcher = Callable[[agent_pb2.AllocationSpec], Awaitable[Path]]


@dataclass(frozen=True)
class SupervisorConfig:
    """Timings and paths of worker supervision; defaults per RELIABILITY.md."""

    data_dir: Path
    worker_host: str = "127.0.0.1"
    drain_timeout: float = 30.0
    kill_grace: float = 2.0  # extra wait after drain_timeout before SIGKILL
    health_interval: float = 10.0
    health_timeout: float = 5.0
    health_failures: int = 3
    restart_backoff: tuple[float, ...] = (1.0, 2.0, 4.0)  # one entry per allowed restart
    restart_reset_after: float = 600.0
    start_timeout: float = 600.0
    python: str = sys.executable
    worker_module: str = "node_agent.worker"
    # GPU device ids this node hands out (CUDA_VISIBLE_DEVICES values); see
    # node_agent.allocations.gpu_devices
    gpu_devices: tuple[str, ...] = ()
    security: WorkerSecurity = WorkerSecurity()
    worker_metrics: bool = False  # workers serve /metrics on a free port (the agent federates it)

    @property
    def workers_dir(self) -> Path:
        return self.data_dir / "workers"

    @property
    def credentials_file(self) -> Path:
        """The verifiers of API keys that may call workers directly (node_agent.worker_security)."""
        return self.workers_dir / "credentials.pb"


@dataclass(frozen=True)
class AdoptedWorker:
    """A running worker found at start-up, described by its state file."""

    pid: int
    port: int
    started_at: float
    log_offset: int
    restarts: int
    gpu_ids: tuple[str, ...] = ()
