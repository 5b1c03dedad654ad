"""SqlStore: the Store's records in SQL tables, shared by SqliteStore and
PostgresStore.

One table per record kind: the key columns (plus indexed deployment_id and
node_id for allocations, the two filters the reconciler uses) and the
serialized protobuf (BLOB / BYTEA). The message stays the single source of
truth; the columns are only there to find and order rows, so adding a field
to a record needs no migration. `model_versions` keeps the highest version
ever stored per model_id, so max_model_version survives deletes and a
version number is never reused.

The statements are written once, with `?` placeholders and the upsert both
dialects know (`INSERT ... ON CONFLICT (key) DO UPDATE`); a subclass names
its placeholder and its two-argument maximum, and runs statements
(`_execute`, `_fetch`). Every public write runs in `transaction()`, so it
commits before it returns unless an outer transaction is open, which it
joins. Schemas, migrations, connections and the transaction hooks are the
subclasses'.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from control_plane.store import _codec
from control_plane.store.base import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import models_pb2


class SqlStore(Store):
    PLACEHOLDER = "?"
    GREATEST = "max"  # SQL of the larger of two values

    @abc.abstractmethod
    def _run(self, sql: str, params: Sequence[object]) -> int:
        """Run one statement (placeholders already the dialect's); the number of rows changed."""

    @abc.abstractmethod
    def _fetch(self, sql: str, params: Sequence[object]) -> list[tuple[object, ...]]:
        """Run one query (placeholders already the dialect's); its rows."""

    def _sql(self, sql: str) -> str:
        return sql if self.PLACEHOLDER == "?" else sql.replace("?", self.PLACEHOLDER)

    def _execute(self, sql: str, params: Sequence[object]) -> int:
        self._check_open()
        return self._run(self._sql(sql), params)

    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[object, ...]]:
        self._check_open()
        return self._fetch(self._sql(sql), params)

    def _query_one(self, sql: str, params: Sequence[object]) -> tuple[object, ...] | None:
        rows = self._query(sql, params)
        return rows[0] if rows else None

    def _write(self, sql: str, params: Sequence[object]) -> int:
        """Run one statement inside transaction(); return the number of rows changed."""
        with self.transaction():
            return self._execute(sql, params)

    # ---- models -------------------------------------------------------------
    def put_model(self, model: models_pb2.Model) -> None:
        model_id, version = _codec.model_key(model)
        blob = _codec.encode(model)
        with self.transaction():
            self._execute(
                "INSERT INTO models (model_id, version, data) VALUES (?, ?, ?) "
                "ON CONFLICT (model_id, version) DO UPDATE SET data = excluded.data",
                (model_id, version, blob),
            )
            self._execute(
                "INSERT INTO model_versions (model_id, max_version) VALUES (?, ?) ON CONFLICT (model_id) "
                f"DO UPDATE SET max_version = {self.GREATEST}(model_versions.max_version, excluded.max_version)",
                (model_id, version),
            )

    def get_model(self, model_id: str, version: int = 0) -> models_pb2.Model | None:
        if version == 0:
            row = self._query_one(
                "SELECT version, data FROM models WHERE model_id = ? ORDER BY version DESC LIMIT 1", (model_id,)
            )
        else:
            row = self._query_one(
                "SELECT version, data FROM models WHERE model_id = ? AND version = ?", (model_id, version)
            )
        if row is None:
            return None
        return _codec.decode(models_pb2.Model, _blob(row[1]), what=f"model {model_id!r} version {row[0]}")

    def list_models(self, model_id: str = "") -> list[models_pb2.Model]:
        if model_id:
            rows = self._query(
                "SELECT model_id, version, data FROM models WHERE model_id = ? ORDER BY version", (model_id,)
            )
        else:
            rows = self._query("SELECT model_id, version, data FROM models ORDER BY model_id, version", ())
        return [
            _codec.decode(models_pb2.Model, _blob(data), what=f"model {mid!r} version {v}") for mid, v, data in rows
        ]

    def delete_model(self, model_id: str, version: int) -> bool:
        return self._write("DELETE FROM models WHERE model_id = ? AND version = ?", (model_id, version)) > 0

    def max_model_version(self, model_id: str) -> int:
        row = self._query_one("SELECT max_version FROM model_versions WHERE model_id = ?", (model_id,))
        return 0 if row is None else _int(row[0])

    # ---- deployments --------------------------------------------------------
    def put_deployment(self, record: records_pb2.DeploymentRecord) -> None:
        key = _codec.deployment_key(record)
        self._write(
            "INSERT INTO deployments (deployment_id, data) VALUES (?, ?) "
            "ON CONFLICT (deployment_id) DO UPDATE SET data = excluded.data", (key, _codec.encode(record))
        )

    def get_deployment(self, deployment_id: str) -> records_pb2.DeploymentRecord | None:
        row = self._query_one("SELECT data FROM deployments WHERE deployment_id = ?", (deployment_id,))
        if row is None:
            return None
        return _codec.decode(records_pb2.DeploymentRecord, _blob(row[0]), what=f"deployment {deployment_id!r}")

    def list_deployments(self) -> list[records_pb2.DeploymentRecord]:
        rows = self._query("SELECT deployment_id, data FROM deployments ORDER BY deployment_id", ())
        return [
            _codec.decode(records_pb2.DeploymentRecord, _blob(data), what=f"deployment {key!r}") for key, data in rows
        ]

    def delete_deployment(self, deployment_id: str) -> bool:
        return self._write("DELETE FROM deployments WHERE deployment_id = ?", (deployment_id,)) > 0

    # ---- allocations --------------------------------------------------------
    def put_allocation(self, record: records_pb2.AllocationRecord) -> None:
        key = _codec.allocation_key(record)
        self._write(
            "INSERT INTO allocations (allocation_id, deployment_id, node_id, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (allocation_id) DO UPDATE SET deployment_id = excluded.deployment_id, node_id = excluded.node_id, data = excluded.data",
            (key, record.deployment_id, record.node_id, _codec.encode(record)),
        )

    def get_allocation(self, allocation_id: str) -> records_pb2.AllocationRecord | None:
        row = self._query_one("SELECT data FROM allocations WHERE allocation_id = ?", (allocation_id,))
        if row is None:
            return None
        return _codec.decode(records_pb2.AllocationRecord, _blob(row[0]), what=f"allocation {allocation_id!r}")

    def list_allocations(self, *, deployment_id: str = "", node_id: str = "") -> list[records_pb2.AllocationRecord]:
        where: list[str] = []
        params: list[object] = []
        if deployment_id:
            where.append("deployment_id = ?")
            params.append(deployment_id)
        if node_id:
            where.append("node_id = ?")
            params.append(node_id)
        sql = "SELECT allocation_id, data FROM allocations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query(sql + " ORDER BY allocation_id", params)
        return [
            _codec.decode(records_pb2.AllocationRecord, _blob(data), what=f"allocation {key!r}") for key, data in rows
        ]

    def delete_allocation(self, allocation_id: str) -> bool:
        return self._write("DELETE FROM allocations WHERE allocation_id = ?", (allocation_id,)) > 0

    # ---- nodes --------------------------------------------------------------
    def put_node(self, record: records_pb2.NodeRecord) -> None:
        key = _codec.node_key(record)
        self._write("INSERT INTO nodes (node_id, data) VALUES (?, ?) "
            "ON CONFLICT (node_id) DO UPDATE SET data = excluded.data", (key, _codec.encode(record)))

    def get_node(self, node_id: str) -> records_pb2.NodeRecord | None:
        row = self._query_one("SELECT data FROM nodes WHERE node_id = ?", (node_id,))
        if row is None:
            return None
        return _codec.decode(records_pb2.NodeRecord, _blob(row[0]), what=f"node {node_id!r}")

    def list_nodes(self) -> list[records_pb2.NodeRecord]:
        rows = self._query("SELECT node_id, data FROM nodes ORDER BY node_id", ())
        return [_codec.decode(records_pb2.NodeRecord, _blob(data), what=f"node {key!r}") for key, data in rows]

    # ---- idempotent requests ------------------------------------------------
    def get_request(self, request_id: str) -> records_pb2.RequestRecord | None:
        row = self._query_one("SELECT data FROM requests WHERE request_id = ?", (request_id,))
        if row is None:
            return None
        return _codec.decode(records_pb2.RequestRecord, _blob(row[0]), what=f"request {request_id!r}")

    def put_request(self, record: records_pb2.RequestRecord) -> None:
        key = _codec.request_key(record)
        self._write("INSERT INTO requests (request_id, data) VALUES (?, ?) "
            "ON CONFLICT (request_id) DO UPDATE SET data = excluded.data", (key, _codec.encode(record)))

    # ---- deployment events --------------------------------------------------
    def get_event_log(self, deployment_id: str) -> records_pb2.EventLogRecord | None:
        row = self._query_one("SELECT data FROM event_logs WHERE deployment_id = ?", (deployment_id,))
        if row is None:
            return None
        return _codec.decode(records_pb2.EventLogRecord, _blob(row[0]), what=f"events of deployment {deployment_id!r}")

    def put_event_log(self, record: records_pb2.EventLogRecord) -> None:
        key = _codec.event_log_key(record)
        self._write(
            "INSERT INTO event_logs (deployment_id, data) VALUES (?, ?) "
            "ON CONFLICT (deployment_id) DO UPDATE SET data = excluded.data", (key, _codec.encode(record))
        )

    def delete_event_log(self, deployment_id: str) -> bool:
        return self._write("DELETE FROM event_logs WHERE deployment_id = ?", (deployment_id,)) > 0

    # ---- API keys -------------------------------------------------------------
    def put_api_key(self, record: records_pb2.ApiKeyRecord) -> None:
        key = _codec.api_key_key(record)
        self._write("INSERT INTO api_keys (key_id, data) VALUES (?, ?) "
            "ON CONFLICT (key_id) DO UPDATE SET data = excluded.data", (key, _codec.encode(record)))

    def get_api_key(self, key_id: str) -> records_pb2.ApiKeyRecord | None:
        row = self._query_one("SELECT data FROM api_keys WHERE key_id = ?", (key_id,))
        if row is None:
            return None
        return _codec.decode(records_pb2.ApiKeyRecord, _blob(row[0]), what=f"API key {key_id!r}")

    def list_api_keys(self) -> list[records_pb2.ApiKeyRecord]:
        rows = self._query("SELECT key_id, data FROM api_keys ORDER BY key_id", ())
        return [_codec.decode(records_pb2.ApiKeyRecord, _blob(data), what=f"API key {key!r}") for key, data in rows]


def _blob(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected a BLOB column, got {type(value).__name__}")


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    raise TypeError(f"expected an INTEGER column, got {type(value).__name__}")
