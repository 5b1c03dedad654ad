"""The Store interface: every durable record of the control plane.

Records are the protobuf messages of modelfleet.store.v1 / modelfleet.v1
(serialized with protobuf, never pickle). Implementations: MemoryStore (unit
tests) and SqliteStore (the default; WAL, synchronous=FULL). Both pass the one
shared contract suite in tests/test_store.py.

Constraints every implementation keeps:
- A method returns only after its write is durable (for SQLite: committed
  with fsync). A reader never sees a write that was not made durable.
- Writes inside `with store.transaction():` commit together or not at all;
  nested transactions join the outer one.
- Returned messages are copies: mutating them does not change the store.
- Calls are made from one thread (the control plane's event loop).
"""

from __future__ import annotations

import abc
import contextlib

from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import models_pb2


class Store(abc.ABC):
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
    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Group writes: all are durable together when the outermost block exits
        without an exception; none are visible if it raises."""

    @abc.abstractmethod
    def close(self) -> None: ...


