"""SqliteStore: the control plane's default durable Store (one SQLite file).

Why SQLite this way:
- WAL journal with `synchronous=FULL`: every COMMIT fsyncs the WAL before it
  returns, so a write that returned survives a crash of the process or of the
  host (DESIGN.md: "every acknowledged mutation is durable before the reply").
  Readers in other processes (a separate gateway, an operator's sqlite3
  shell) never block the writer.
- The tables and every statement on them are control_plane.store.sql's,
  shared with the PostgreSQL store; this module holds SQLite's schema steps,
  connection settings and transaction hooks.
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

from control_plane.store.sql import SqlStore, _int

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


class SqliteStore(SqlStore):
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

    # ---- statements (SqlStore) ------------------------------------------------
    def _run(self, sql: str, params: Sequence[object]) -> int:
        return self._conn.execute(sql, params).rowcount

    def _fetch(self, sql: str, params: Sequence[object]) -> list[tuple[object, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            # SQLite may already have rolled back (e.g. after an I/O error).
            logger.exception("store %s: ROLLBACK failed", self.path)

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
