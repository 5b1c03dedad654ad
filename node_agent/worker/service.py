"""The inference worker's transport-free logic: one model, one bounded queue.

`WorkerService` owns the loaded `Runtime`, the `WorkQueue`, the `Stats` and
the worker's lifecycle (`WorkerState`, changed only by `_transition`
against `_TRANSITIONS`). Servicers call it with decoded requests; it raises
`node_agent.worker.errors` only. `warm_up` runs one inference with zeros at
load when every input shape is static.

Dynamic batching (opt-in, `batching=Batching(...)`): a request whose inputs
all share one first dimension gets a batch key (input names, dtypes and the
dimensions after the first, plus the requested outputs) and that dimension
as its rows; the queue hands compatible requests to `_run_batch` together,
which concatenates each input along dimension 0, runs the model once, checks
that every output has the batch's total rows as its first dimension, and
splits the outputs back by each request's offset. A failure anywhere fails
every request of that batch with the same error; a request never sees
another's rows. `check_batchable` refuses (at load) a model whose inputs or
outputs lack a dynamic first dimension.

Inline execution: when the model is fast (a moving average of its run time
below `inline_max_s`, 300 us by default) and nothing is queued, the event
loop thread runs the call itself instead of handing it to a model thread
and back: two thread wake-ups and a self-pipe write cost as much as such a
model's run (the profile in docs/performance.md). It counts as one of the
`model_threads` running calls, so the queue's bounds hold. A run that turns
out slow raises the average and sends the next calls to the model threads.
Off with batching (batches form in the queue) and with `inline_max_s=0`.

Concurrency: all methods except `_run_batch` / `_execute` run on the asyncio
loop thread; those run on the queue's model threads (or inline, on the
loop) and touch only the runtime (thread-safe) and `Stats` (locked). State listeners (health
reporting) are awaited on the loop after each transition.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import time
from collections.abc import Awaitable, Callable

import numpy as np

from node_agent.runtime.base import ExecutionError, InputError, LoadError, Runtime, TensorSpec
from node_agent.runtime.dtypes import BYTES, numpy_dtype, wire_array
from node_agent.worker.codec import InferRequest
from node_agent.worker.errors import DeadlineExceeded, InvalidArgument, ModelExecutionFailed, NotFound, Unavailable
from node_agent.worker.stats import Stats, StatsSnapshot
from node_agent.worker.workqueue import Batching, WorkQueue

logger = logging.getLogger(__name__)

PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
DEFAULT_INLINE_MAX_S = 300e-6
_AVERAGE_WEIGHT = 0.1  # of the newest run in the moving average


class WorkerState(str, enum.Enum):
    """The worker's lifecycle."""

    LOADING = "LOADING"  # constructed; not yet taking calls
    SERVING = "SERVING"
    DRAINING = "DRAINING"  # refusing new calls, finishing queued ones
    STOPPED = "STOPPED"


_TRANSITIONS: frozenset[tuple[WorkerState, WorkerState]] = frozenset(
    {
        (WorkerState.LOADING, WorkerState.SERVING),
        (WorkerState.LOADING, WorkerState.STOPPED),
        (WorkerState.SERVING, WorkerState.DRAINING),
        (WorkerState.SERVING, WorkerState.STOPPED),
        (WorkerState.DRAINING, WorkerState.STOPPED),
    }
)

StateListener = Callable[["WorkerState"], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class DrainOutcome:
    """What a drain did: calls finished during it, calls it gave up on."""

    completed: int
    abandoned: int


def warm_up(runtime: Runtime) -> bool:
    """Run one inference with zeros when every input shape is static.

    Returns:
        True when it ran, False when some input shape is dynamic (skipped).

    Raises:
        ExecutionError / InputError: the model cannot run (a load failure).
    """
    if not all(spec.is_static for spec in runtime.inputs):
        return False
    inputs = {spec.name: _zeros(spec) for spec in runtime.inputs}
    runtime.run(inputs, [spec.name for spec in runtime.outputs])
    return True


def check_batchable(runtime: Runtime) -> None:
    """Dynamic batching needs a dynamic first dimension on every input and output.

    Raises:
        LoadError: naming the first tensor that has none.
    """
    for kind, specs in (("input", runtime.inputs), ("output", runtime.outputs)):
        for spec in specs:
            if spec.any_shape:
                continue  # undeclared TorchScript tensors: checked per batch
            if not spec.shape or spec.shape[0] != -1:
                raise LoadError(
                    f"dynamic batching needs a dynamic first (batch) dimension on every input and output; "
                    f"{kind} '{spec.name}' has shape {list(spec.shape)}"
                )


@dataclasses.dataclass(frozen=True)
class _Pending:
    """One admitted request on its way to a model thread."""

    request: InferRequest
    admitted: int  # perf_counter_ns() at admission


def batch_key(request: InferRequest) -> tuple[object, int] | None:
    """(key, rows) when `request` may share a model run with others, else None.

    Requests are compatible when they name the same inputs with the same
    dtypes and the same dimensions after the first, and ask for the same
    outputs; rows is the first dimension, which every input must share.
    """
    rows = -1
    parts = []
    for name, array in request.inputs.items():
        if array.ndim == 0 or (rows >= 0 and array.shape[0] != rows):
            return None
        rows = array.shape[0]
        parts.append((name, array.dtype.str, array.shape[1:]))
    if rows <= 0:
        return None
    return (tuple(sorted(parts)), request.outputs), rows


def _wire_output(name: str, array: np.ndarray) -> np.ndarray:
    """An output as the wire wants it; a dtype V2 cannot name is the model's fault."""
    try:
        return wire_array(array)
    except ValueError as exc:
        raise ExecutionError(f"output '{name}': {exc}") from exc


def _zeros(spec: TensorSpec) -> np.ndarray:
    if spec.datatype == BYTES:
        array = np.empty(spec.shape, dtype=object)
        array.fill(b"")
        return array
    return np.zeros(spec.shape, dtype=numpy_dtype(spec.datatype))


class WorkerService:
    """One served model; see the module docstring."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        name: str,
        version: str,
        model_threads: int,
        model_version: int = 0,
        queue_capacity: int,
        loop: asyncio.AbstractEventLoop,
        stats: Stats | None = None,
        batching: Batching | None = None,
        inline_max_s: float = DEFAULT_INLINE_MAX_S,
    ) -> None:
        self.runtime = runtime
        self.name = name
        self.version = version
        self.model_version = model_version  # the model's version number; 0 = unknown
        self.model_threads = model_threads
        # the agent hides every GPU but the allocation's (none: "")
        self.on_gpu = bool(os.environ.get("CUDA_VISIBLE_DEVICES", "").strip())
        self.platform = PLATFORMS.get(runtime.format, runtime.format)
        self.stats = stats or Stats()
        self.batching = batching
        self.inline_max_s = 0.0 if batching is not None else inline_max_s
        self._run_avg_s = float("inf")  # moving average of one run's time; inf until measured
        self.queue = WorkQueue(
            threads=model_threads,
            capacity=queue_capacity,
            stats=self.stats,
            loop=loop,
            batching=batching,
            run_batch=self._run_batch,
        )
        self.state = WorkerState.LOADING
        self._listeners: list[StateListener] = []

    # ---- lifecycle -----------------------------------------------------------
    def add_listener(self, listener: StateListener) -> None:
        """Await `listener(state)` after every state change."""
        self._listeners.append(listener)

    async def _transition(self, to: WorkerState) -> None:
        if (self.state, to) not in _TRANSITIONS:
            raise RuntimeError(f"invalid worker transition {self.state.value} -> {to.value}")
        logger.info("worker %s: %s -> %s", self.name, self.state.value, to.value)
        self.state = to
        for listener in self._listeners:
            await listener(to)

    async def start(self) -> None:
        """Start the model threads and take calls."""
        self.queue.start()
        await self._transition(WorkerState.SERVING)

    async def drain(self, timeout: float) -> DrainOutcome:
        """Refuse new calls (UNAVAILABLE) and wait up to `timeout` seconds for
        the queued and running ones; calls still queued then are failed.
        Safe to call again (a later call waits again)."""
        if self.state is WorkerState.SERVING:
            await self._transition(WorkerState.DRAINING)
        self.queue.stop_admitting()
        completed_before = self.queue.completed
        idle = await self.queue.wait_idle(max(0.0, timeout))
        abandoned = 0
        if not idle:
            abandoned = self.queue.abandon_queued(Unavailable("worker is draining; the call was not run in time"))
            abandoned += self.queue.pending  # still running past the timeout
            logger.warning("drain timed out after %.1f s; %d calls abandoned", timeout, abandoned)
        return DrainOutcome(completed=self.queue.completed - completed_before, abandoned=abandoned)

    async def stop(self) -> None:
        """Stop the model threads (after drain, or at once)."""
        if self.state is not WorkerState.STOPPED:
            await self._transition(WorkerState.STOPPED)
        await asyncio.to_thread(self.queue.stop)

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.SERVING

    # ---- model identity --------------------------------------------------------
    def check_model(self, name: str, version: str) -> None:
        """Raises NotFound unless (name, version) is this worker's model: version "" means the
        served one; the variant name and the model's version number (as Triton clients send it) both name it."""
        if name != self.name:
            raise NotFound(f"unknown model '{name}'; this worker serves '{self.name}'")
        if version not in ("", *self.versions()):
            raise NotFound(
                f"unknown version '{version}' of model '{name}'; this worker serves version {' or '.join(map(repr, self.versions()))}"
            )

    def versions(self) -> tuple[str, ...]:
        """The names of the served version: the model's version number (when known), then the variant."""
        return (str(self.model_version), self.version) if self.model_version else (self.version,)

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.runtime.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.runtime.outputs

    # ---- inference --------------------------------------------------------------
    async def infer(self, request: InferRequest, *, deadline: float | None) -> dict[str, np.ndarray]:
        """Queue one validated request and return its wire-ready outputs.

        Args:
            request: decoded by `codec.decode_infer_request`.
            deadline: `time.monotonic()` after which it must not start.

        Raises:
            Unavailable: draining. QueueFull: no room. DeadlineExceeded.
            ModelExecutionFailed: the model raised. InvalidArgument: an input
            the runtime could not convert.
        """
        if self.state is not WorkerState.SERVING:
            raise Unavailable("worker is draining" if self.state is WorkerState.DRAINING else "worker is not serving")
        self.stats.record_access()
        admitted = time.perf_counter_ns()
        if deadline is not None and time.monotonic() >= deadline:
            self.stats.record_timeout()
            raise DeadlineExceeded("deadline exceeded before the call was queued")
        pending = _Pending(request, admitted)
        if self._run_avg_s < self.inline_max_s:
            ran, outputs = self.queue.try_inline(pending)
            if ran:
                return outputs
        batchable = batch_key(request) if self.batching is not None else None
        if batchable is None:
            return await self.queue.submit(pending, deadline=deadline)
        key, rows = batchable
        return await self.queue.submit(pending, deadline=deadline, key=key, rows=rows)

    def _run_batch(self, items: list[_Pending]) -> list[dict[str, np.ndarray]]:
        """Runs on a model thread: one request alone, or a batch (see the module docstring)."""
        if len(items) == 1:
            rows = self._rows(items[0].request)
            result = self._execute(items[0].request, items[0].admitted, rows=rows)
            self.stats.record_batch(1, rows=rows)
            return [result]
        started = time.perf_counter_ns()
        names = items[0].request.outputs
        sizes = [next(iter(p.request.inputs.values())).shape[0] for p in items]
        total = sum(sizes)
        try:
            inputs = {
                name: np.concatenate([p.request.inputs[name] for p in items]) for name in items[0].request.inputs
            }
            produced = self.runtime.run(inputs, names)
            for name in names:
                shape = produced[name].shape
                if not shape or shape[0] != total:
                    raise ExecutionError(
                        f"output '{name}' has shape {list(shape)}: its first dimension is not the batch size "
                        f"{total}, so the batch cannot be split back (disable dynamic batching for this model)"
                    )
            ran = time.perf_counter_ns()
            wire = {name: _wire_output(name, produced[name]) for name in names}
        except (InputError, ExecutionError) as exc:
            failed = time.perf_counter_ns()
            for p in items:
                self.stats.record_failure(total_ns=failed - p.admitted, model_error=isinstance(exc, ExecutionError))
            if isinstance(exc, InputError):
                raise InvalidArgument(str(exc)) from exc
            raise ModelExecutionFailed(f"model execution failed: {exc}") from exc
        except Exception:
            failed = time.perf_counter_ns()
            for p in items:
                self.stats.record_failure(total_ns=failed - p.admitted, model_error=True)
            raise
        done = time.perf_counter_ns()
        self.stats.record_batch(len(items), rows=total)
        results: list[dict[str, np.ndarray]] = []
        offset = 0
        for p, rows in zip(items, sizes, strict=True):
            results.append({name: wire[name][offset : offset + rows] for name in names})
            offset += rows
            self.stats.record_success(
                queue_ns=started - p.admitted,
                input_ns=p.request.decode_ns,
                infer_ns=ran - started,
                output_ns=done - ran,
                total_ns=done - p.admitted + p.request.decode_ns,
                rows=rows,
            )
        return results

    def _rows(self, request: InferRequest) -> int:
        """The inferences a call holds as Triton counts them: its rows with batching, else 1."""
        first = next(iter(request.inputs.values()), None) if self.batching is not None else None
        return int(first.shape[0]) if first is not None and first.ndim > 0 else 1

    def _execute(self, request: InferRequest, admitted: int, *, rows: int = 1) -> dict[str, np.ndarray]:
        """Runs on a model thread: one request (of `rows` inferences, for the statistics)."""
        started = time.perf_counter_ns()
        try:
            produced = self.runtime.run(request.inputs, request.outputs)
            ran = time.perf_counter_ns()
            outputs = {name: _wire_output(name, produced[name]) for name in request.outputs}
        except InputError as exc:
            self.stats.record_failure(total_ns=time.perf_counter_ns() - admitted, model_error=False)
            raise InvalidArgument(str(exc)) from exc
        except ExecutionError as exc:
            self.stats.record_failure(total_ns=time.perf_counter_ns() - admitted, model_error=True)
            raise ModelExecutionFailed(f"model execution failed: {exc}") from exc
        except Exception:
            self.stats.record_failure(total_ns=time.perf_counter_ns() - admitted, model_error=True)
            raise
        done = time.perf_counter_ns()
        seconds = (ran - started) / 1e9
        average = self._run_avg_s
        self._run_avg_s = seconds if average == float("inf") else average + _AVERAGE_WEIGHT * (seconds - average)
        self.stats.record_success(
            queue_ns=started - admitted,
            input_ns=request.decode_ns,
            infer_ns=ran - started,
            output_ns=done - ran,
            total_ns=done - admitted + request.decode_ns,
            rows=rows,
        )
        return outputs

    def snapshot(self) -> StatsSnapshot:
        """The counters, with the number of calls pending now."""
        return self.stats.snapshot(pending=self.queue.pending)


def rss_bytes() -> int:
    """This process's resident set size (from /proc/self/statm; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
