"""The bounded queue between the asyncio server and the model threads.

`model_threads` OS threads take calls from one FIFO. At most `model_threads`
calls run at once and at most `capacity` more wait; admission counts both
(pending = queued + running), so the next call is refused at once with
`QueueFull` ("queue is full (capacity N)") however quickly the threads pick
work up. The asyncio handler admits a job, then awaits a future that the
model thread completes through `loop.call_soon_threadsafe`.

A queued call is never run when its deadline has passed (a thread finds it
expired when it takes it: DeadlineExceeded, timeout_count) or when its
handler was cancelled (gRPC cancels the handler task when the client cancels
or the deadline passes: the call leaves the queue at once and its slot is
freed; cancelled_count or timeout_count). A call that runs is not
interrupted. Each call moves through `CallState` by `_Call.transition` only.

Locking: one `threading.Condition` guards the queue, the counters and every
call's state. It is held only for O(1) bookkeeping, never while a job runs or
a future is resolved (resolution is scheduled onto the loop, which never
blocks). Lock order: queue -> stats.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from node_agent.worker.errors import DeadlineExceeded, QueueFull, Unavailable
from node_agent.worker.stats import Stats

logger = logging.getLogger(__name__)

T = TypeVar("T")

# gRPC cancels a handler at its deadline by its own clock; a cancellation this
# close to our copy of the deadline counts as a timeout, not a client cancel.
_DEADLINE_SLACK_S = 0.02


class CallState(str, enum.Enum):
    """Where one admitted call is."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"  # ran; succeeded or raised
    EXPIRED = "EXPIRED"  # its deadline passed while queued; never ran
    CANCELLED = "CANCELLED"  # its client went away while queued; never ran
    ABANDONED = "ABANDONED"  # still queued when a drain gave up; never ran


_TRANSITIONS: frozenset[tuple[CallState, CallState]] = frozenset(
    {
        (CallState.QUEUED, CallState.RUNNING),
        (CallState.QUEUED, CallState.EXPIRED),
        (CallState.QUEUED, CallState.CANCELLED),
        (CallState.QUEUED, CallState.ABANDONED),
        (CallState.RUNNING, CallState.DONE),
    }
)


class _Call(Generic[T]):
    """One admitted call. Hashes by identity (it keys the FIFO)."""

    __slots__ = ("job", "deadline", "future", "state")

    def __init__(self, job: Callable[[], T], deadline: float | None, future: asyncio.Future[T]) -> None:
        self.job = job
        self.deadline = deadline  # time.monotonic() value, or None
        self.future = future
        self.state = CallState.QUEUED

    def transition(self, to: CallState) -> None:
        """The only place a call's state changes (caller holds the queue lock)."""
        if (self.state, to) not in _TRANSITIONS:
            raise RuntimeError(f"invalid call transition {self.state.value} -> {to.value}")
        self.state = to

    def expired(self, now: float, *, slack: float = 0.0) -> bool:
        return self.deadline is not None and now >= self.deadline - slack


class WorkQueue:
    """A bounded FIFO served by `threads` model threads; see the module docstring."""

    def __init__(self, *, threads: int, capacity: int, stats: Stats, loop: asyncio.AbstractEventLoop) -> None:
        if threads < 1 or capacity < 0:
            raise ValueError(f"need threads >= 1 and capacity >= 0, got {threads} and {capacity}")
        self.threads = threads
        self.capacity = capacity
        self._stats = stats
        self._loop = loop
        self._cond = threading.Condition(threading.Lock())
        self._fifo: collections.OrderedDict[_Call[Any], None] = collections.OrderedDict()
        self._running = 0
        self._completed = 0
        self._admitting = True
        self._stopping = False
        self._idle_waiters: list[asyncio.Event] = []
        self._workers = [
            threading.Thread(target=self._serve, name=f"model-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        """Start the model threads."""
        for worker in self._workers:
            worker.start()

    # ---- the asyncio side ----------------------------------------------
    async def run(self, job: Callable[[], T], *, deadline: float | None) -> T:
        """Admit `job`, wait for a model thread to run it, return its result.

        Args:
            job: runs on a model thread; its exception is re-raised here.
            deadline: `time.monotonic()` after which it must not start.

        Raises:
            QueueFull: model_threads running and capacity waiting already.
            Unavailable: the queue stopped admitting (draining).
            DeadlineExceeded: the deadline passed before it could start.
        """
        future: asyncio.Future[T] = self._loop.create_future()
        call = _Call(job, deadline, future)
        with self._cond:
            if not self._admitting:
                raise Unavailable("worker is draining")
            waiting = len(self._fifo)
            full = waiting + self._running >= self.capacity + self.threads
            if not full:
                self._fifo[call] = None
                self._cond.notify()
        if full:
            self._stats.record_rejected()
            raise QueueFull(
                f"queue is full (capacity {self.capacity})",
                trailers={"grpc-retry-pushback-ms": str(self._pushback_ms(waiting))},
            )
        try:
            return await future
        except asyncio.CancelledError:
            self._withdraw(call)
            raise

    def _withdraw(self, call: _Call[Any]) -> None:
        """The handler was cancelled: drop the call if it has not started."""
        with self._cond:
            if call.state is not CallState.QUEUED:
                return  # running calls finish; their result is dropped
            del self._fifo[call]
            timed_out = call.expired(time.monotonic(), slack=_DEADLINE_SLACK_S)
            call.transition(CallState.EXPIRED if timed_out else CallState.CANCELLED)
            self._notify_if_idle()
        if timed_out:
            self._stats.record_timeout()
        else:
            self._stats.record_cancelled()

    def _pushback_ms(self, waiting: int) -> int:
        """A suggested wait before retrying: the queue's expected drain time."""
        per_call = self._stats.average_inference_ms()
        return max(1, round(per_call * (waiting + self.threads) / self.threads))

    @property
    def pending(self) -> int:
        """Calls queued or running now."""
        with self._cond:
            return len(self._fifo) + self._running

    @property
    def completed(self) -> int:
        """Calls run to the end (success or failure) since start."""
        with self._cond:
            return self._completed

    def stop_admitting(self) -> None:
        """From now on `run` raises Unavailable("worker is draining")."""
        with self._cond:
            self._admitting = False

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or running; False on timeout."""
        event = asyncio.Event()
        with self._cond:
            if not self._fifo and not self._running:
                return True
            self._idle_waiters.append(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._cond:
                if event in self._idle_waiters:
                    self._idle_waiters.remove(event)

    def abandon_queued(self, error: Exception) -> int:
        """Fail every call still waiting with `error`; returns how many."""
        with self._cond:
            calls = list(self._fifo)
            self._fifo.clear()
            for call in calls:
                call.transition(CallState.ABANDONED)
                self._resolve(call.future, None, error)
            self._notify_if_idle()
        return len(calls)

    def stop(self, *, join_timeout: float = 1.0) -> None:
        """Stop the threads after their current call (queued calls stay unrun)."""
        with self._cond:
            self._admitting = False
            self._stopping = True
            self._cond.notify_all()
        for worker in self._workers:
            if worker.is_alive() and worker is not threading.current_thread():
                worker.join(join_timeout)

    # ---- the model threads -----------------------------------------------
    def _serve(self) -> None:
        while True:
            call = self._take()
            if call is None:
                return
            result: Any = None
            error: BaseException | None = None
            try:
                result = call.job()
            except BaseException as exc:  # delivered to the awaiting handler
                error = exc
            with self._cond:
                call.transition(CallState.DONE)
                self._running -= 1
                self._completed += 1
                self._notify_if_idle()
            self._resolve(call.future, result, error)

    def _take(self) -> _Call[Any] | None:
        """The next live call (expired ones are failed on the way), or None to stop."""
        expired = 0
        try:
            with self._cond:
                while True:
                    if self._stopping:
                        return None
                    if not self._fifo:
                        self._cond.wait()
                        continue
                    call, _ = self._fifo.popitem(last=False)
                    if call.expired(time.monotonic()):
                        call.transition(CallState.EXPIRED)
                        expired += 1
                        self._resolve(call.future, None, DeadlineExceeded("deadline exceeded while queued"))
                        self._notify_if_idle()
                        continue
                    call.transition(CallState.RUNNING)
                    self._running += 1
                    return call
        finally:
            for _ in range(expired):
                self._stats.record_timeout()

    # ---- helpers (some under the lock) -------------------------------------
    def _notify_if_idle(self) -> None:
        """Caller holds the lock. Wake drain waiters once nothing is pending."""
        if self._fifo or self._running:
            return
        for event in self._idle_waiters:
            self._call_soon(event.set)

    def _resolve(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        """Complete `future` on its loop (from any thread); never blocks."""

        def settle() -> None:
            if future.done():  # the handler was cancelled meanwhile
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self._call_soon(settle)

    def _call_soon(self, fn: Callable[[], None]) -> None:
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            logger.debug("event loop closed; dropping a completion")
