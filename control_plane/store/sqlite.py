"""SqliteStore: the control plane's default durable Store (one SQLite file).

Why SQLite this way:
- WAL journal with `synchronous=FULL`: every COMMIT fsyncs the WAL before it
  returns, so a write that returned survives a crash of the process or of the
  host (DESIGN.md: "every acknowledged mutation is durable before the reply").
  Readers in other processes (a separate gateway, an operator's sqlite3
  shell) never block the writer.
- One table per record kind: the key columns (plus indexed deployment_id and
  node_id for allocations, the two filters the reconciler uses) and a BLOB of
  the serialized protobuf. The message stays the single source of truth; the
  columns are only there to find and order rows, so adding a field to a
  record needs no migration.
- `model_versions` keeps the highest version ever stored per model_id, so
  max_model_version survives deletes and a version number is never reused.
- `schema_version` holds one integer. Opening runs every migration step above
  it in one BEGIN IMMEDIATE transaction (two processes cannot migrate at
  once), and refuses a file written by a newer schema than this code knows.

Transactions (base.Store.transaction, whose hooks are here): the connection
runs in autocommit mode (isolation_level=None) and the hooks issue BEGIN
IMMEDIATE / COMMIT / ROLLBACK themselves. Every public write runs in a
transaction, so it commits before it returns unless an outer transaction is
open, which it joins. IMMEDIATE takes the write lock at BEGIN, so a
transaction never fails half-way with SQLITE_BUSY on upgrade.

Thread model: base.Store's (one owning thread, no locks). The connection
keeps sqlite3's default check_same_thread=True, so a call from any other
thread raises sqlite3.ProgrammingError, checked in C on every statement.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from control_plane.store import _codec
from control_plane.store.base import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import models_pb2

logger = logging.getLogger(__name__)

DEFAULT_FILENAME = "modelfleet.db"
BUSY_TIMEOUT_MS = 10_000

# Migration steps: _MIGRATIONS[i] moves the schema from version i to i + 1.
# Append only; never edit a released step. Statements run inside one
# transaction (SQLite DDL is transactional), so a step applies fully or not at all.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE models (
            model_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (model_id, version)
        )""",
        """CREATE TABLE model_versions (
            model_id TEXT PRIMARY KEY,
            max_version INTEGER NOT NULL
        )""",
        """CREATE TABLE deployments (
            deployment_id TEXT PRIMARY KEY,
            data BLOB NOT NULL
        )""",
        """CREATE TABLE allocations (
            allocation_id TEXT PRIMARY KEY,
            deployment_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            data BLOB NOT NULL
        )""",
        "CREATE INDEX allocations_by_deployment ON allocations (deployment_id, allocation_id)",
        "CREATE INDEX allocations_by_node ON allocations (node_id, allocation_id)",
        """CREATE TABLE nodes (
            node_id TEXT PRIMARY KEY,
            data BLOB NOT NULL
        )""",
        """CREATE TABLE requests (
            request_id TEXT PRIMARY KEY,
            data BLOB NOT NULL
        )""",
    ),
    (
        """CREATE TABLE event_logs (
            deployment_id TEXT PRIMARY KEY,
            data BLOB NOT NULL
        )""",
    ),
    (
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            data BLOB NOT NULL
        )""",
    ),
)


class SchemaVersionError(RuntimeError):
    """The file was written by a newer modelfleet (a schema this code does not know)."""


def _fsync_dir(path: Path) -> None:
    """Make a newly created file's directory entry durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SqliteStore(Store):
    """Store in one SQLite file; see the module docstring.

    Args:
        path: the database file (created with its parent directories if absent).

    Raises:
        SchemaVersionError: the file has a newer schema than this code.
        RuntimeError: the file system cannot hold a WAL database.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        super().__init__()
        self._conn = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            self._configure()
            self._migrate()
        except BaseException:
            self._conn.close()
            self._closed = True
            raise
        if created:
            _fsync_dir(self.path.parent)

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # ---- setup ----------------------------------------------------------------
    def _configure(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite could not enable WAL mode (journal_mode is {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        (sync,) = conn.execute("PRAGMA synchronous").fetchone()
        if int(sync) != 2:
            raise RuntimeError(f"{self.path}: SQLite refused synchronous=FULL (got {sync})")

    def _migrate(self) -> None:
        latest = len(_MIGRATIONS)
        with self.transaction():
            conn = self._conn
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
                current = 0
            else:
                current = _int(row[0])
            if current > latest:
                raise SchemaVersionError(
                    f"{self.path} has store schema version {current}; this modelfleet knows up to {latest}"
                )
            for step in range(current, latest):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
                logger.info("store %s: migrated schema to version %d", self.path, step + 1)
            if current != latest:
                conn.execute("UPDATE schema_version SET version = ?", (latest,))

    def schema_version(self) -> int:
        """The schema version of the open file (after migration: the latest)."""
        row = self._query_one("SELECT version FROM schema_version", ())
        return 0 if row is None else _int(row[0])

    # ---- helpers --------------------------------------------------------------
    def _query(self, sql: str, params: Sequence[object]) -> list[tuple[object, ...]]:
        self._check_open()
        return self._conn.execute(sql, params).fetchall()

    def _query_one(self, sql: str, params: Sequence[object]) -> tuple[object, ...] | None:
        self._check_open()
        row: tuple[object, ...] | None = self._conn.execute(sql, params).fetchone()
        return row

    def _write(self, sql: str, params: Sequence[object]) -> int:
        """Run one statement inside transaction(); return the number of rows changed."""
        with self.transaction():
            return self._conn.execute(sql, params).rowcount

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            # SQLite may already have rolled back (e.g. after an I/O error).
            logger.exception("store %s: ROLLBACK failed", self.path)

    # ---- models -------------------------------------------------------------
    def put_model(self, model: models_pb2.Model) -> None:
        model_id, version = _codec.model_key(model)
        blob = _codec.encode(model)
        with self.transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO models (model_id, version, data) VALUES (?, ?, ?)",
                (model_id, version, blob),
            )
            self._conn.execute(
                "INSERT INTO model_versions (model_id, max_version) VALUES (?, ?) "
                "ON CONFLICT (model_id) DO UPDATE SET max_version = max(max_version, excluded.max_version)",
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
            "INSERT OR REPLACE INTO deployments (deployment_id, data) VALUES (?, ?)", (key, _codec.encode(record))
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
            "INSERT OR REPLACE INTO allocations (allocation_id, deployment_id, node_id, data) VALUES (?, ?, ?, ?)",
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
        self._write("INSERT OR REPLACE INTO nodes (node_id, data) VALUES (?, ?)", (key, _codec.encode(record)))

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
        self._write("INSERT OR REPLACE INTO requests (request_id, data) VALUES (?, ?)", (key, _codec.encode(record)))

    # ---- deployment events --------------------------------------------------
    def get_event_log(self, deployment_id: str) -> records_pb2.EventLogRecord | None:
        row = self._query_one("SELECT data FROM event_logs WHERE deployment_id = ?", (deployment_id,))
        if row is None:
            return None
        return _codec.decode(records_pb2.EventLogRecord, _blob(row[0]), what=f"events of deployment {deployment_id!r}")

    def put_event_log(self, record: records_pb2.EventLogRecord) -> None:
        key = _codec.event_log_key(record)
        self._write(
            "INSERT OR REPLACE INTO event_logs (deployment_id, data) VALUES (?, ?)", (key, _codec.encode(record))
        )

    def delete_event_log(self, deployment_id: str) -> bool:
        return self._write("DELETE FROM event_logs WHERE deployment_id = ?", (deployment_id,)) > 0

    # ---- API keys -------------------------------------------------------------
    def put_api_key(self, record: records_pb2.ApiKeyRecord) -> None:
        key = _codec.api_key_key(record)
        self._write("INSERT OR REPLACE INTO api_keys (key_id, data) VALUES (?, ?)", (key, _codec.encode(record)))

    def get_api_key(self, key_id: str) -> records_pb2.ApiKeyRecord | None:
        row = self._query_one("SELECT data FROM api_keys WHERE key_id = ?", (key_id,))
        if row is None:
            return None
        return _codec.decode(records_pb2.ApiKeyRecord, _blob(row[0]), what=f"API key {key_id!r}")

    def list_api_keys(self) -> list[records_pb2.ApiKeyRecord]:
        rows = self._query("SELECT key_id, data FROM api_keys ORDER BY key_id", ())
        return [_codec.decode(records_pb2.ApiKeyRecord, _blob(data), what=f"API key {key!r}") for key, data in rows]

    # ---- transaction hooks and lifecycle --------------------------------------
    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    def _abort(self) -> None:
        self._rollback()

    def close(self) -> None:
        """Close the file (rolling back an open transaction). Idempotent; later calls raise."""
        if self._closed:
            return
        self._closed = True
        self._tx_depth = 0
        self._rollback()
        self._conn.close()


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
