"""The bounded queue between the asyncio server and the model threads.

`model_threads` OS threads take calls from one FIFO. At most `model_threads`
calls run at once and at most `capacity` more wait; admission counts both
(pending = queued + running), so the next call is refused at once with
`QueueFull` ("queue is full (capacity N)") however quickly the threads pick
work up. The asyncio handler admits a job, then awaits a future that the
model thread completes through `loop.call_soon_threadsafe`.

Dynamic batching (opt-in, `Batching(max_batch_size, max_queue_delay_s)`):
calls submitted with `submit(item, key=..., rows=...)` carry a batch key
(the caller's notion of "compatible shapes") and a row count. A model thread
looks at the oldest call; it takes it together with the later queued calls
of the same key, in FIFO order, while their rows fit in `max_batch_size`,
and runs them as one batch through `run_batch(items) -> outcomes`. It takes
the batch at once when it is full, when the oldest call has waited
`max_queue_delay_s`, or when the queue is draining; otherwise it waits for
more calls (the calls stay QUEUED meanwhile, so deadlines and cancellation
work as without batching). A call whose rows alone exceed the limit, or that
has no key, runs alone. With batching, `model_threads` batches run at once:
admission allows `capacity` waiting beyond `threads x max_batch_size`
running calls. `run_batch` returns one outcome per item (a result, or the
exception for that item); if it raises, every call of the batch fails with
that error. Outcomes are matched to calls by position only, never mixed.

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
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Batching:
    """Dynamic batching: at most `max_batch_size` rows per run; the oldest call
    waits at most `max_queue_delay_s` for others to join it."""

    max_batch_size: int
    max_queue_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_delay_s < 0:
            raise ValueError(f"need max_batch_size >= 1 and max_queue_delay_s >= 0, got {self}")


BatchRunner = Callable[[list[Any]], list[Any]]


class _Call(Generic[T]):
    """One admitted call. Hashes by identity (it keys the FIFO)."""

    __slots__ = ("deadline", "future", "item", "key", "queued_at", "rows", "state")

    def __init__(
        self,
        item: Any,
        deadline: float | None,
        future: asyncio.Future[T],
        *,
        key: Any = None,
        rows: int = 1,
    ) -> None:
        self.item = item
        self.key = key  # batch key; None = never batched
        self.rows = rows
        self.queued_at = time.monotonic()
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

    def __init__(
        self,
        *,
        threads: int,
        capacity: int,
        stats: Stats,
        loop: asyncio.AbstractEventLoop,
        batching: Batching | None = None,
        run_batch: BatchRunner | None = None,
    ) -> None:
        if threads < 1 or capacity < 0:
            raise ValueError(f"need threads >= 1 and capacity >= 0, got {threads} and {capacity}")
        self.threads = threads
        self.capacity = capacity
        self.batching = batching
        self._run_batch = run_batch
        self._run_slots = threads * (batching.max_batch_size if batching else 1)
        self._stats = stats
        self._loop = loop
        self._cond = threading.Condition(threading.Lock())
        self._fifo: collections.OrderedDict[_Call[Any], None] = collections.OrderedDict()
        self._running = 0
        self._completed = 0
        self._admitting = True
        self._stopping = False
        self._idle_waiters: list[asyncio.Event] = []
        self._filling = 0  # model threads waiting for a batch to fill (timed waits)
        self._workers = [
            threading.Thread(target=self._serve, name=f"model-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        """Start the model threads."""
        for worker in self._workers:
            worker.start()

    # ---- the asyncio side ----------------------------------------------
    def try_inline(self, item: Any) -> tuple[bool, Any]:
        """Run `item` through `run_batch` on the calling thread (the event loop)
        when nothing waits and a model thread slot is free; it counts as running
        like any call. Returns (False, None) without running it otherwise.

        The caller decides that the model is fast enough to block the loop for
        (see WorkerService); a call taken here skips two thread hand-offs.

        Raises:
            Unavailable: the queue stopped admitting. Whatever run_batch raised.
        """
        assert self._run_batch is not None
        with self._cond:
            if not self._admitting:
                raise Unavailable("worker is draining")
            if self._fifo or self._running >= self.threads:
                return False, None
            self._running += 1
        try:
            (outcome,) = self._run_batch([item])
        finally:
            with self._cond:
                self._running -= 1
                self._completed += 1
                self._notify_if_idle()
        if isinstance(outcome, BaseException):
            raise outcome
        return True, outcome

    async def submit(self, item: Any, *, deadline: float | None, key: Any = None, rows: int = 1) -> Any:
        """Admit `item` for `run_batch`; return its outcome (or raise its error).

        Args:
            item: handed to `run_batch` (alone, or with others of the same key).
            deadline: `time.monotonic()` after which it must not start.
            key: batch key; calls with equal keys may run together (None: alone).
            rows: this call's share of `max_batch_size`.

        Raises:
            QueueFull: model_threads running and capacity waiting already.
            Unavailable: the queue stopped admitting (draining).
            DeadlineExceeded: the deadline passed before it could start.
            Whatever `run_batch` reported for this item.
        """
        if self._run_batch is None:
            raise RuntimeError("submit() needs a WorkQueue built with run_batch")
        call: _Call[Any] = _Call(item, deadline, self._loop.create_future(), key=key, rows=rows)
        return await self._admit(call)

    async def _admit(self, call: _Call[T]) -> T:
        future = call.future
        with self._cond:
            if not self._admitting:
                raise Unavailable("worker is draining")
            waiting = len(self._fifo)
            full = waiting + self._running >= self.capacity + self._run_slots
            if not full:
                self._fifo[call] = None
                if self._should_wake(call):
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

    def _should_wake(self, call: _Call[Any]) -> bool:
        """Caller holds the lock. Wake a model thread for a new call unless one is
        already waiting for its batch to fill and the call cannot have filled it
        (a wake-up per call costs a GIL hand-off each, which dominates at 64 concurrent calls).
        Calls of several rows can fill it with fewer calls than max_batch_size."""
        batching = self.batching
        if batching is None or call.key is None or not self._filling:
            return True
        # rows, not calls, fill a batch; fewer calls than max_batch_size hold few rows to add up
        return len(self._fifo) >= batching.max_batch_size or sum(c.rows for c in self._fifo) >= batching.max_batch_size

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

    def depth(self) -> tuple[int, int]:
        """(calls waiting, calls running) now."""
        with self._cond:
            return len(self._fifo), self._running

    @property
    def completed(self) -> int:
        """Calls run to the end (success or failure) since start."""
        with self._cond:
            return self._completed

    def stop_admitting(self) -> None:
        """From now on `submit` raises Unavailable("worker is draining")."""
        with self._cond:
            self._admitting = False
            self._cond.notify_all()  # a batch waiting for more calls goes at once

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
            batch = self._take()
            if batch is None:
                return
            outcomes = self._execute(batch)
            with self._cond:
                for call in batch:
                    call.transition(CallState.DONE)
                self._running -= len(batch)
                self._completed += len(batch)
                self._notify_if_idle()
            self._resolve_all([(call.future, result, error) for call, (result, error) in zip(batch, outcomes, strict=True)])

    def _execute(self, batch: list[_Call[Any]]) -> list[tuple[Any, BaseException | None]]:
        """Run one batch of items (maybe of one); one (result, error) per call."""
        assert self._run_batch is not None
        try:
            results = self._run_batch([call.item for call in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} outcomes for {len(batch)} items")
        except BaseException as exc:  # the whole batch failed: every call gets the error
            return [(None, exc)] * len(batch)
        return [(None, r) if isinstance(r, BaseException) else (r, None) for r in results]

    def _take(self) -> list[_Call[Any]] | None:
        """The next live call or batch (expired calls are failed on the way), or None to stop."""
        expired = 0
        try:
            with self._cond:
                while True:
                    if self._stopping:
                        return None
                    if not self._fifo:
                        self._cond.wait()
                        continue
                    now = time.monotonic()
                    head = next(iter(self._fifo))
                    if head.expired(now):
                        del self._fifo[head]
                        self._expire(head)
                        expired += 1
                        continue
                    batching = self.batching
                    if batching is None or head.key is None or head.rows >= batching.max_batch_size:
                        batch = [head]
                    else:
                        batch, full, dead = self._collect(head, batching.max_batch_size, now)
                        for call in dead:
                            del self._fifo[call]
                            self._expire(call)
                        expired += len(dead)
                        wait = head.queued_at + batching.max_queue_delay_s - now
                        if not full and wait > 0 and self._admitting:
                            self._filling += 1
                            try:
                                self._cond.wait(wait)  # more may join; re-examine from the head
                            finally:
                                self._filling -= 1
                            continue
                    for call in batch:
                        del self._fifo[call]
                        call.transition(CallState.RUNNING)
                    self._running += len(batch)
                    if self._fifo and batching is not None:
                        self._cond.notify()  # an idle thread may start forming the next batch
                    return batch
        finally:
            for _ in range(expired):
                self._stats.record_timeout()

    def _collect(self, head: _Call[Any], limit: int, now: float) -> tuple[list[_Call[Any]], bool, list[_Call[Any]]]:
        """Caller holds the lock. The queued calls of head's key, oldest first,
        whose rows fit in `limit`; whether the batch is full; expired ones met."""
        batch: list[_Call[Any]] = []
        dead: list[_Call[Any]] = []
        rows = 0
        for call in self._fifo:
            if call.key != head.key:
                continue
            if call.expired(now):
                dead.append(call)
                continue
            if rows + call.rows > limit:
                return batch, True, dead
            batch.append(call)
            rows += call.rows
            if rows == limit:
                return batch, True, dead
        return batch, False, dead

    def _expire(self, call: _Call[Any]) -> None:
        """Caller holds the lock and removed `call` from the FIFO."""
        call.transition(CallState.EXPIRED)
        self._resolve(call.future, None, DeadlineExceeded("deadline exceeded while queued"))
        self._notify_if_idle()

    # ---- helpers (some under the lock) -------------------------------------
    def _notify_if_idle(self) -> None:
        """Caller holds the lock. Wake drain waiters once nothing is pending."""
        if self._fifo or self._running:
            return
        for event in self._idle_waiters:
            self._call_soon(event.set)

    def _resolve(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        """Complete `future` on its loop (from any thread); never blocks."""
        self._resolve_all([(future, result, error)])

    def _resolve_all(self, outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
        """Complete every future with one hand-off to the loop (one wake-up per batch, not per call)."""

        def settle() -> None:
            for future, result, error in outcomes:
                if future.done():  # the handler was cancelled meanwhile
                    continue
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
