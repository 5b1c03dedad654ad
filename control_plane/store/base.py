"""The Store interface: every durable record of the control plane.

Records are the protobuf messages of modelfleet.store.v1 / modelfleet.v1
(serialized with protobuf, never pickle). Implementations: MemoryStore (unit
tests), SqliteStore (the default; WAL, synchronous=FULL) and CachedStore (a
write-through read cache in front of either). All pass the one shared
contract suite in tests/unit/store/test_store.py.

Constraints every implementation keeps:
- A method returns only after its write is durable (for SQLite: committed
  with fsync). A reader never sees a write that was not made durable.
- Writes inside `with store.transaction():` commit together or not at all;
  reads inside the block see its writes. Nested blocks join the outer one
  (no savepoints): only the outermost block commits, and an exception that
  leaves the outermost block, BaseException included (a cancelled coroutine
  must not leave half a change), aborts everything written since it began.
  An exception raised in a nested block and caught inside the outer one
  aborts nothing: the nested block's writes commit with the outer block.
- Returned messages are copies: mutating them does not change the store.

Thread model: a Store belongs to the thread that opened it, which in the
control plane is the event loop's thread (the /metrics scrape thread reaches
the store only through `asyncio.run_coroutine_threadsafe`; work handed to
`asyncio.to_thread` never touches it; another process, such as the crash
test's writer, opens a store of its own). Implementations are not
thread-safe and take no locks. The rule is enforced where a mistake would
corrupt state and the check is cheap: every `transaction()` entry raises
RuntimeError on another thread (each write of MemoryStore and SqliteStore
runs in one, so the check is one get_ident next to a snapshot or an fsync),
and SqliteStore keeps sqlite3's own check_same_thread on every statement.
Reads of MemoryStore and CachedStore are not checked: they are the hot path
(the gateway and the reconciler read per call and per tick). Do not await
inside a transaction: another coroutine on the same thread would join it.

Transactions are implemented once, here: `transaction()` keeps the nesting
depth and calls three backend hooks, each only for the outermost block:
- `_begin()`: open the transaction (SQLite: BEGIN IMMEDIATE; memory: take
  a snapshot). If it raises, nothing may be left open.
- `_commit()`: make every write since `_begin` durable. It may refuse by
  raising (a PostgreSQL store checks its fencing epoch here, before COMMIT on
  its pooled connection); the base then calls `_abort()` and re-raises.
- `_abort()`: undo everything since `_begin` (ROLLBACK, restore the
  snapshot, return a pooled connection). It should not raise: it runs while
  another exception propagates.
The hooks are synchronous, like the whole interface. A store that wraps
another joins the inner store's transaction through `_enter_transaction()`
and `_leave_transaction(commit=...)`, the two halves of `transaction()`.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Iterator

from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import models_pb2


class Store(abc.ABC):
    """Every durable record; see the module docstring for the contract.

    Subclasses call `super().__init__()` first, on the thread that owns the
    store, and implement the record methods, `close()` and the three
    transaction hooks.
    """

    def __init__(self) -> None:
        self._owner = threading.get_ident()
        self._tx_depth = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def _check_thread(self) -> None:
        caller = threading.get_ident()
        if caller != self._owner:
            raise RuntimeError(f"{self!r} belongs to thread {self._owner}; it was called from thread {caller}")

    # ---- models -------------------------------------------------------------
    @abc.abstractmethod
    def put_model(self, model: models_pb2.Model) -> None:
        """Insert or replace the model (model_id, version)."""

    @abc.abstractmethod
    def get_model(self, model_id: str, version: int = 0) -> models_pb2.Model | None:
        """One version; version 0 = the newest version. None if absent."""

    @abc.abstractmethod
    def list_models(self, model_id: str = "") -> list[models_pb2.Model]:
        """All models (or all versions of model_id), by model_id then version."""

    @abc.abstractmethod
    def delete_model(self, model_id: str, version: int) -> bool:
        """Delete one version. True if it existed."""

    @abc.abstractmethod
    def max_model_version(self, model_id: str) -> int:
        """The highest version ever stored for model_id (0 if none).

        Survives deletes, so a version number is never reused."""

    # ---- deployments --------------------------------------------------------
    @abc.abstractmethod
    def put_deployment(self, record: records_pb2.DeploymentRecord) -> None:
        """Insert or replace by deployment_id."""

    @abc.abstractmethod
    def get_deployment(self, deployment_id: str) -> records_pb2.DeploymentRecord | None: ...

    @abc.abstractmethod
    def list_deployments(self) -> list[records_pb2.DeploymentRecord]:
        """All deployments, by deployment_id."""

    @abc.abstractmethod
    def delete_deployment(self, deployment_id: str) -> bool: ...

    # ---- allocations --------------------------------------------------------
    @abc.abstractmethod
    def put_allocation(self, record: records_pb2.AllocationRecord) -> None:
        """Insert or replace by allocation_id."""

    @abc.abstractmethod
    def get_allocation(self, allocation_id: str) -> records_pb2.AllocationRecord | None: ...

    @abc.abstractmethod
    def list_allocations(self, *, deployment_id: str = "", node_id: str = "") -> list[records_pb2.AllocationRecord]:
        """Filtered by the non-empty arguments, by allocation_id."""

    @abc.abstractmethod
    def delete_allocation(self, allocation_id: str) -> bool: ...

    # ---- nodes --------------------------------------------------------------
    @abc.abstractmethod
    def put_node(self, record: records_pb2.NodeRecord) -> None:
        """Insert or replace by info.node_id."""

    @abc.abstractmethod
    def get_node(self, node_id: str) -> records_pb2.NodeRecord | None: ...

    @abc.abstractmethod
    def list_nodes(self) -> list[records_pb2.NodeRecord]:
        """All nodes, by node_id."""

    # ---- idempotent requests ------------------------------------------------
    @abc.abstractmethod
    def get_request(self, request_id: str) -> records_pb2.RequestRecord | None: ...

    @abc.abstractmethod
    def put_request(self, record: records_pb2.RequestRecord) -> None:
        """Insert or replace by request_id."""

    # ---- deployment events --------------------------------------------------
    @abc.abstractmethod
    def get_event_log(self, deployment_id: str) -> records_pb2.EventLogRecord | None:
        """The deployment's recent events, or None if none were recorded."""

    @abc.abstractmethod
    def put_event_log(self, record: records_pb2.EventLogRecord) -> None:
        """Insert or replace by deployment_id."""

    @abc.abstractmethod
    def delete_event_log(self, deployment_id: str) -> bool: ...

    # ---- API keys -------------------------------------------------------------
    @abc.abstractmethod
    def put_api_key(self, record: records_pb2.ApiKeyRecord) -> None:
        """Insert or replace by key_id."""

    @abc.abstractmethod
    def get_api_key(self, key_id: str) -> records_pb2.ApiKeyRecord | None: ...

    @abc.abstractmethod
    def list_api_keys(self) -> list[records_pb2.ApiKeyRecord]:
        """All keys (revoked ones included), by key_id."""

    # ---- transactions and lifecycle -----------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all are durable together when the outermost block exits
        without an exception; none are visible if it raises.

        Raises:
            RuntimeError: the store is closed, or called from another thread.
        """
        self._enter_transaction()
        try:
            yield
        except BaseException:
            self._leave_transaction(commit=False)
            raise
        self._leave_transaction(commit=True)

    def _enter_transaction(self) -> None:
        """Open a block: the outermost one begins the backend's transaction."""
        self._check_open()
        self._check_thread()
        if self._tx_depth:
            self._tx_depth += 1
            return
        self._begin()
        self._tx_depth = 1

    def _leave_transaction(self, *, commit: bool) -> None:
        """Close a block: a nested one only leaves; the outermost one decides.

        `commit=False` (the block raised) from a nested block aborts nothing
        by itself: the exception goes on to the outer block, which aborts
        unless it catches it.
        """
        if self._tx_depth > 1:
            self._tx_depth -= 1
            return
        self._tx_depth = 0
        if not commit:
            self._abort()
            return
        try:
            self._commit()
        except BaseException:
            self._abort()
            raise

    @abc.abstractmethod
    def _begin(self) -> None:
        """Begin the outermost transaction (see the module docstring)."""

    @abc.abstractmethod
    def _commit(self) -> None:
        """Make the outermost transaction durable, or raise to refuse it."""

    @abc.abstractmethod
    def _abort(self) -> None:
        """Undo the outermost transaction; should not raise."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend. Idempotent; any later call raises RuntimeError."""
