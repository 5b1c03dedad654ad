"""CachedStore: a write-through, in-memory read cache in front of a Store.

Why: the reconciler reads deployments, allocations and nodes on every tick,
and the gateway and the API read them per call. From SQLite each read is a
query plus a protobuf parse; with a thousand nodes and deployments that
dominated the control plane (see docs/performance.md). The control plane is
the store's only writer, so it can keep every deployment, allocation
(indexed by deployment and by node), node and model in memory, load them
once at start, and serve reads as copies of the cached messages.

Contract (base.Store) kept exactly:
- A write goes to the inner store first (which validates and makes it
  durable, or raises: then the cache is untouched), and only then into the
  cache, so a reader never sees a write that is not durable.
- Transactions are base.Store's; the hooks here join the inner store's
  transaction (`_begin` enters it, `_commit` leaves it committing) and keep
  an undo log: inside a transaction writes enter the cache at once (reads in
  the block see them, as with SQLite) and the log remembers what they
  replaced. If the outermost block raises, or the inner store refuses the
  commit, `_abort` rolls the inner store back and replays the log
  backwards, so the cache again equals the inner store.
- Returned messages are copies; stored messages are copies of the input.
- Idempotent-request records, event logs, API keys and `max_model_version`
  are read from the inner store (rare calls, or cached by their owner:
  control_plane.auth.keys keeps the keys in memory).

Thread model: base.Store's (one owning thread, no locks); the cache's
reads are plain dict lookups and are not checked, its writes are checked
by the inner store's transaction entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from control_plane.store.base import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import models_pb2

M = TypeVar("M")


def _copy(message: M) -> M:
    out = type(message)()
    out.CopyFrom(message)  # type: ignore[attr-defined]
    return out


class CachedStore(Store):
    """See the module docstring. Owns `inner` (closing this closes it)."""

    def __init__(self, inner: Store) -> None:
        super().__init__()
        self.inner = inner
        self._inner_open = False  # between _begin and the inner store's commit or abort
        self._undo: list[Callable[[], None]] = []
        self._models: dict[tuple[str, int], models_pb2.Model] = {}
        self._deployments: dict[str, records_pb2.DeploymentRecord] = {}
        self._allocations: dict[str, records_pb2.AllocationRecord] = {}
        self._by_deployment: dict[str, set[str]] = {}
        self._by_node: dict[str, set[str]] = {}
        self._nodes: dict[str, records_pb2.NodeRecord] = {}
        for model in inner.list_models():
            self._models[(model.model_id, model.version)] = model
        for dep in inner.list_deployments():
            self._deployments[dep.deployment_id] = dep
        for alloc in inner.list_allocations():
            self._set_allocation(alloc.allocation_id, alloc)
        for node in inner.list_nodes():
            self._nodes[node.info.node_id] = node

    def __repr__(self) -> str:
        return f"CachedStore({self.inner!r})"

    # ---- helpers ----------------------------------------------------------------
    def _remember(self, table: dict[Any, Any], key: Any, setter: Callable[[Any, Any], None] | None = None) -> None:
        """Inside a transaction: log how to restore table[key] as it is now."""
        if not self._tx_depth:
            return
        old = table.get(key)
        put = setter or (lambda k, v: table.__setitem__(k, v) if v is not None else table.pop(k, None))
        self._undo.append(lambda: put(key, old))

    def _set_allocation(self, allocation_id: str, record: records_pb2.AllocationRecord | None) -> None:
        old = self._allocations.pop(allocation_id, None)
        if old is not None:
            for index, key in ((self._by_deployment, old.deployment_id), (self._by_node, old.node_id)):
                ids = index.get(key)
                if ids is not None:
                    ids.discard(allocation_id)
                    if not ids:
                        del index[key]
        if record is not None:
            self._allocations[allocation_id] = record
            self._by_deployment.setdefault(record.deployment_id, set()).add(allocation_id)
            self._by_node.setdefault(record.node_id, set()).add(allocation_id)

    # ---- models -------------------------------------------------------------
    def put_model(self, model: models_pb2.Model) -> None:
        self._check_open()
        self.inner.put_model(model)
        key = (model.model_id, model.version)
        self._remember(self._models, key)
        self._models[key] = _copy(model)

    def get_model(self, model_id: str, version: int = 0) -> models_pb2.Model | None:
        self._check_open()
        if version == 0:
            versions = [v for (mid, v) in self._models if mid == model_id]
            version = max(versions) if versions else -1
        found = self._models.get((model_id, version))
        return _copy(found) if found is not None else None

    def list_models(self, model_id: str = "") -> list[models_pb2.Model]:
        self._check_open()
        keys = sorted(k for k in self._models if not model_id or k[0] == model_id)
        return [_copy(self._models[k]) for k in keys]

    def delete_model(self, model_id: str, version: int) -> bool:
        self._check_open()
        existed = self.inner.delete_model(model_id, version)
        self._remember(self._models, (model_id, version))
        self._models.pop((model_id, version), None)
        return existed

    def max_model_version(self, model_id: str) -> int:
        self._check_open()
        return self.inner.max_model_version(model_id)

    # ---- deployments --------------------------------------------------------
    def put_deployment(self, record: records_pb2.DeploymentRecord) -> None:
        self._check_open()
        self.inner.put_deployment(record)
        self._remember(self._deployments, record.deployment_id)
        self._deployments[record.deployment_id] = _copy(record)

    def get_deployment(self, deployment_id: str) -> records_pb2.DeploymentRecord | None:
        self._check_open()
        found = self._deployments.get(deployment_id)
        return _copy(found) if found is not None else None

    def list_deployments(self) -> list[records_pb2.DeploymentRecord]:
        self._check_open()
        return [_copy(self._deployments[k]) for k in sorted(self._deployments)]

    def delete_deployment(self, deployment_id: str) -> bool:
        self._check_open()
        existed = self.inner.delete_deployment(deployment_id)
        self._remember(self._deployments, deployment_id)
        self._deployments.pop(deployment_id, None)
        return existed

    # ---- allocations --------------------------------------------------------
    def put_allocation(self, record: records_pb2.AllocationRecord) -> None:
        self._check_open()
        self.inner.put_allocation(record)
        self._remember(self._allocations, record.allocation_id, self._set_allocation)
        self._set_allocation(record.allocation_id, _copy(record))

    def get_allocation(self, allocation_id: str) -> records_pb2.AllocationRecord | None:
        self._check_open()
        found = self._allocations.get(allocation_id)
        return _copy(found) if found is not None else None

    def list_allocations(self, *, deployment_id: str = "", node_id: str = "") -> list[records_pb2.AllocationRecord]:
        self._check_open()
        if deployment_id:
            ids = set(self._by_deployment.get(deployment_id, ()))
            if node_id:
                ids &= self._by_node.get(node_id, set())
        elif node_id:
            ids = set(self._by_node.get(node_id, ()))
        else:
            ids = set(self._allocations)
        return [_copy(self._allocations[i]) for i in sorted(ids)]

    def delete_allocation(self, allocation_id: str) -> bool:
        self._check_open()
        existed = self.inner.delete_allocation(allocation_id)
        self._remember(self._allocations, allocation_id, self._set_allocation)
        self._set_allocation(allocation_id, None)
        return existed

    # ---- nodes --------------------------------------------------------------
    def put_node(self, record: records_pb2.NodeRecord) -> None:
        self._check_open()
        self.inner.put_node(record)
        self._remember(self._nodes, record.info.node_id)
        self._nodes[record.info.node_id] = _copy(record)

    def get_node(self, node_id: str) -> records_pb2.NodeRecord | None:
        self._check_open()
        found = self._nodes.get(node_id)
        return _copy(found) if found is not None else None

    def list_nodes(self) -> list[records_pb2.NodeRecord]:
        self._check_open()
        return [_copy(self._nodes[k]) for k in sorted(self._nodes)]

    # ---- idempotent requests (not cached) -------------------------------------
    def get_request(self, request_id: str) -> records_pb2.RequestRecord | None:
        self._check_open()
        return self.inner.get_request(request_id)

    def put_request(self, record: records_pb2.RequestRecord) -> None:
        self._check_open()
        self.inner.put_request(record)

    # ---- event logs and API keys (not cached) ---------------------------------
    def get_event_log(self, deployment_id: str) -> records_pb2.EventLogRecord | None:
        self._check_open()
        return self.inner.get_event_log(deployment_id)

    def put_event_log(self, record: records_pb2.EventLogRecord) -> None:
        self._check_open()
        self.inner.put_event_log(record)

    def delete_event_log(self, deployment_id: str) -> bool:
        self._check_open()
        return self.inner.delete_event_log(deployment_id)

    def put_api_key(self, record: records_pb2.ApiKeyRecord) -> None:
        self._check_open()
        self.inner.put_api_key(record)

    def get_api_key(self, key_id: str) -> records_pb2.ApiKeyRecord | None:
        self._check_open()
        return self.inner.get_api_key(key_id)

    def list_api_keys(self) -> list[records_pb2.ApiKeyRecord]:
        self._check_open()
        return self.inner.list_api_keys()

    # ---- transaction hooks and lifecycle --------------------------------------
    def _begin(self) -> None:
        self.inner._enter_transaction()
        self._inner_open = True
        self._undo = []

    def _commit(self) -> None:
        # On failure the inner store has rolled itself back; _abort (called
        # next by the base) then only replays the undo log.
        self._inner_open = False
        self.inner._leave_transaction(commit=True)
        self._undo = []

    def _abort(self) -> None:
        undo, self._undo = self._undo, []
        try:
            if self._inner_open:
                self._inner_open = False
                self.inner._leave_transaction(commit=False)
        finally:
            for step in reversed(undo):
                step()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.inner.close()
