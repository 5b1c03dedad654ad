"""MemoryStore: the Store contract in process memory, for unit tests.

Every record is kept as its serialized protobuf bytes, so what a caller gets
back is always a fresh copy and what it passed in can be mutated afterwards
without touching the store (the same isolation the SQLite backend gives).

Transactions (base.Store.transaction, whose hooks are here): `_begin` takes
a snapshot of every table (shallow dict copies; the values are immutable
bytes, so this is cheap), `_abort` restores it, `_commit` drops it. Every
public write runs in a transaction, so a write that raises changes nothing.

Nothing is durable; "durable before return" holds trivially for the life of
the object. Thread model: base.Store's (one owning thread, no locks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control_plane.store import _codec
from control_plane.store.base import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import models_pb2


@dataclass
class _Tables:
    """The whole state; copy() is the transaction snapshot."""

    models: dict[tuple[str, int], bytes] = field(default_factory=dict)
    max_versions: dict[str, int] = field(default_factory=dict)
    deployments: dict[str, bytes] = field(default_factory=dict)
    allocations: dict[str, bytes] = field(default_factory=dict)
    nodes: dict[str, bytes] = field(default_factory=dict)
    requests: dict[str, bytes] = field(default_factory=dict)
    events: dict[str, bytes] = field(default_factory=dict)
    api_keys: dict[str, bytes] = field(default_factory=dict)

    def copy(self) -> _Tables:
        return _Tables(
            models=dict(self.models),
            max_versions=dict(self.max_versions),
            deployments=dict(self.deployments),
            allocations=dict(self.allocations),
            nodes=dict(self.nodes),
            requests=dict(self.requests),
            events=dict(self.events),
            api_keys=dict(self.api_keys),
        )


class MemoryStore(Store):
    """In-memory Store; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._t = _Tables()
        self._snapshot: _Tables | None = None

    # ---- models -------------------------------------------------------------
    def put_model(self, model: models_pb2.Model) -> None:
        key = _codec.model_key(model)
        blob = _codec.encode(model)
        with self.transaction():
            self._t.models[key] = blob
            model_id, version = key
            self._t.max_versions[model_id] = max(version, self._t.max_versions.get(model_id, 0))

    def get_model(self, model_id: str, version: int = 0) -> models_pb2.Model | None:
        self._check_open()
        if version == 0:
            versions = [v for (mid, v) in self._t.models if mid == model_id]
            if not versions:
                return None
            version = max(versions)
        blob = self._t.models.get((model_id, version))
        if blob is None:
            return None
        return _codec.decode(models_pb2.Model, blob, what=f"model {model_id!r} version {version}")

    def list_models(self, model_id: str = "") -> list[models_pb2.Model]:
        self._check_open()
        items = sorted((k, b) for k, b in self._t.models.items() if not model_id or k[0] == model_id)
        return [_codec.decode(models_pb2.Model, b, what=f"model {k[0]!r} version {k[1]}") for k, b in items]

    def delete_model(self, model_id: str, version: int) -> bool:
        with self.transaction():
            return self._t.models.pop((model_id, version), None) is not None

    def max_model_version(self, model_id: str) -> int:
        self._check_open()
        return self._t.max_versions.get(model_id, 0)

    # ---- deployments --------------------------------------------------------
    def put_deployment(self, record: records_pb2.DeploymentRecord) -> None:
        key = _codec.deployment_key(record)
        blob = _codec.encode(record)
        with self.transaction():
            self._t.deployments[key] = blob

    def get_deployment(self, deployment_id: str) -> records_pb2.DeploymentRecord | None:
        self._check_open()
        blob = self._t.deployments.get(deployment_id)
        if blob is None:
            return None
        return _codec.decode(records_pb2.DeploymentRecord, blob, what=f"deployment {deployment_id!r}")

    def list_deployments(self) -> list[records_pb2.DeploymentRecord]:
        self._check_open()
        items = sorted(self._t.deployments.items())
        return [_codec.decode(records_pb2.DeploymentRecord, b, what=f"deployment {k!r}") for k, b in items]

    def delete_deployment(self, deployment_id: str) -> bool:
        with self.transaction():
            return self._t.deployments.pop(deployment_id, None) is not None

    # ---- allocations --------------------------------------------------------
    def put_allocation(self, record: records_pb2.AllocationRecord) -> None:
        key = _codec.allocation_key(record)
        blob = _codec.encode(record)
        with self.transaction():
            self._t.allocations[key] = blob

    def get_allocation(self, allocation_id: str) -> records_pb2.AllocationRecord | None:
        self._check_open()
        blob = self._t.allocations.get(allocation_id)
        if blob is None:
            return None
        return _codec.decode(records_pb2.AllocationRecord, blob, what=f"allocation {allocation_id!r}")

    def list_allocations(self, *, deployment_id: str = "", node_id: str = "") -> list[records_pb2.AllocationRecord]:
        self._check_open()
        items = sorted(self._t.allocations.items())
        records = [_codec.decode(records_pb2.AllocationRecord, b, what=f"allocation {k!r}") for k, b in items]
        return [
            r
            for r in records
            if (not deployment_id or r.deployment_id == deployment_id) and (not node_id or r.node_id == node_id)
        ]

    def delete_allocation(self, allocation_id: str) -> bool:
        with self.transaction():
            return self._t.allocations.pop(allocation_id, None) is not None

    # ---- nodes --------------------------------------------------------------
    def put_node(self, record: records_pb2.NodeRecord) -> None:
        key = _codec.node_key(record)
        blob = _codec.encode(record)
        with self.transaction():
            self._t.nodes[key] = blob

    def get_node(self, node_id: str) -> records_pb2.NodeRecord | None:
        self._check_open()
        blob = self._t.nodes.get(node_id)
        if blob is None:
            return None
        return _codec.decode(records_pb2.NodeRecord, blob, what=f"node {node_id!r}")

    def list_nodes(self) -> list[records_pb2.NodeRecord]:
        self._check_open()
        items = sorted(self._t.nodes.items())
        return [_codec.decode(records_pb2.NodeRecord, b, what=f"node {k!r}") for k, b in items]

    # ---- idempotent requests ------------------------------------------------
    def get_request(self, request_id: str) -> records_pb2.RequestRecord | None:
        self._check_open()
        blob = self._t.requests.get(request_id)
        if blob is None:
            return None
        return _codec.decode(records_pb2.RequestRecord, blob, what=f"request {request_id!r}")

    def put_request(self, record: records_pb2.RequestRecord) -> None:
        key = _codec.request_key(record)
        blob = _codec.encode(record)
        with self.transaction():
            self._t.requests[key] = blob

    # ---- deployment events --------------------------------------------------
    def get_event_log(self, deployment_id: str) -> records_pb2.EventLogRecord | None:
        self._check_open()
        blob = self._t.events.get(deployment_id)
        if blob is None:
            return None
        return _codec.decode(records_pb2.EventLogRecord, blob, what=f"events of deployment {deployment_id!r}")

    def put_event_log(self, record: records_pb2.EventLogRecord) -> None:
        key = _codec.event_log_key(record)
        blob = _codec.encode(record)
        with self.transaction():
            self._t.events[key] = blob

    def delete_event_log(self, deployment_id: str) -> bool:
        with self.transaction():
            return self._t.events.pop(deployment_id, None) is not None

    # ---- API keys -------------------------------------------------------------
    def put_api_key(self, record: records_pb2.ApiKeyRecord) -> None:
        key = _codec.api_key_key(record)
        blob = _codec.encode(record)
        with self.transaction():
            self._t.api_keys[key] = blob

    def get_api_key(self, key_id: str) -> records_pb2.ApiKeyRecord | None:
        self._check_open()
        blob = self._t.api_keys.get(key_id)
        if blob is None:
            return None
        return _codec.decode(records_pb2.ApiKeyRecord, blob, what=f"API key {key_id!r}")

    def list_api_keys(self) -> list[records_pb2.ApiKeyRecord]:
        self._check_open()
        items = sorted(self._t.api_keys.items())
        return [_codec.decode(records_pb2.ApiKeyRecord, b, what=f"API key {k!r}") for k, b in items]

    # ---- transaction hooks and lifecycle --------------------------------------
    def _begin(self) -> None:
        self._snapshot = self._t.copy()

    def _commit(self) -> None:
        self._snapshot = None

    def _abort(self) -> None:
        if self._snapshot is not None:
            self._t, self._snapshot = self._snapshot, None

    def close(self) -> None:
        """Drop everything; any later call raises RuntimeError. Idempotent."""
        self._closed = True
        self._t = _Tables()
        self._snapshot = None
