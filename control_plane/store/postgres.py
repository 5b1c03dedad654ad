"""PostgresStore: the Store on a PostgreSQL database (`--store postgresql://...`).

The tables and statements are control_plane.store.sql's (shared with
SQLite); this module holds PostgreSQL's schema steps, its connection and the
transaction hooks.

- One psycopg 3 connection per store, in autocommit mode, with the hooks
  issuing BEGIN / COMMIT / ROLLBACK: the Store has one owning thread and never
  awaits inside a transaction, so a pool would only add connections that
  wait their turn. Each write commits before it returns (PostgreSQL's
  default `synchronous_commit = on`: the WAL is flushed at COMMIT).
- Transactions run at READ COMMITTED with one writer: the leader (several
  control-plane replicas may share the database; control_plane.leader keeps
  the lease). The lease is the one `leader` row (holder, address, epoch,
  expires_at), taken or renewed by one UPDATE that compares `expires_at`
  with the database's clock `now()`, never a replica's; the epoch grows
  whenever the holder changes. `replicas` lists every replica that
  campaigns (for `modelfleet status`).
- Fencing: once `fence(epoch)` (or `fence(None)`, a standby) is set, `_commit`
  reads the lease row `FOR SHARE` inside the open transaction, before
  COMMIT, and raises `Fenced` unless it still carries that epoch. The share
  lock makes a takeover's UPDATE wait for this COMMIT, so no write of a
  deposed leader can land after the epoch moved on. Lease statements run
  outside transaction() (autocommit), so they are never fenced themselves.
- `schema_version` holds one integer; opening runs every missing migration
  step in one transaction under an advisory lock (two replicas cannot
  migrate at once) and refuses a database written by a newer schema.
- The password never appears on the command line or in a URL: it comes
  from `--store-password-file` or libpq's own PGPASSFILE / ~/.pgpass.
  Errors name the URL with any password masked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import psycopg

from control_plane.errors import NotLeader
from control_plane.store.lease import Lease, Replica
from control_plane.store.sql import SqlStore, _int
from control_plane.store.sqlite import SchemaVersionError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
_MIGRATION_LOCK = 0x6D66_7374  # pg_advisory_xact_lock key: "mfst"

# _MIGRATIONS[i] moves the schema from version i to i + 1. Append only.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE models (model_id TEXT NOT NULL, version INTEGER NOT NULL, data BYTEA NOT NULL, "
        "PRIMARY KEY (model_id, version))",
        "CREATE TABLE model_versions (model_id TEXT PRIMARY KEY, max_version INTEGER NOT NULL)",
        "CREATE TABLE deployments (deployment_id TEXT PRIMARY KEY, data BYTEA NOT NULL)",
        "CREATE TABLE allocations (allocation_id TEXT PRIMARY KEY, deployment_id TEXT NOT NULL, "
        "node_id TEXT NOT NULL, data BYTEA NOT NULL)",
        "CREATE INDEX allocations_by_deployment ON allocations (deployment_id, allocation_id)",
        "CREATE INDEX allocations_by_node ON allocations (node_id, allocation_id)",
        "CREATE TABLE nodes (node_id TEXT PRIMARY KEY, data BYTEA NOT NULL)",
        "CREATE TABLE requests (request_id TEXT PRIMARY KEY, data BYTEA NOT NULL)",
        "CREATE TABLE event_logs (deployment_id TEXT PRIMARY KEY, data BYTEA NOT NULL)",
        "CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, data BYTEA NOT NULL)",
    ),
    (
        "CREATE TABLE leader (id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, "
        "address TEXT NOT NULL, epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)",
        "INSERT INTO leader (id, holder, address, epoch, expires_at) VALUES (1, '', '', 0, '1970-01-01T00:00:00Z')",
        "CREATE TABLE replicas (holder TEXT PRIMARY KEY, address TEXT NOT NULL, "
        "started_at TIMESTAMPTZ NOT NULL, seen_at TIMESTAMPTZ NOT NULL)",
    ),
)

# One UPDATE takes a free or expired lease, or renews our own; the epoch moves only
# when the holder changes. RETURNING gives the row only when we hold it afterwards.
_CAMPAIGN = (
    "UPDATE leader SET epoch = CASE WHEN holder = %(me)s THEN epoch ELSE epoch + 1 END, "
    "holder = %(me)s, address = %(address)s, expires_at = now() + make_interval(secs => %(ttl)s) "
    "WHERE id = 1 AND (holder = %(me)s OR expires_at < now()) "
    "RETURNING holder, address, epoch, expires_at, now()"
)
_SEEN = (
    "INSERT INTO replicas (holder, address, started_at, seen_at) VALUES (%s, %s, now(), now()) "
    "ON CONFLICT (holder) DO UPDATE SET address = excluded.address, seen_at = now()"
)


class Fenced(NotLeader):
    """A write by a replica that does not hold the current epoch of the lease; nothing was committed."""

    def __init__(self, message: str, *, leader: Lease | None) -> None:
        super().__init__(message, leader_address=leader.address if leader is not None and leader.live else "")
        self.leader = leader


class ConnectError(RuntimeError):
    """The database could not be reached or refused us; the message names the URL (password masked)."""


# userinfo's password runs to the last "@" before the path or query; libpq also takes
# `?password=...` among the query parameters.
_USERINFO_PASSWORD = re.compile(r"(://[^:/@]*):[^/?#]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def masked(url: str) -> str:
    """The URL with any password (in the user part or a `password=` parameter) replaced by ***."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", url))


def check_url(url: str) -> None:
    """Refuse a URL that carries a password (it would show in `ps` and in logs)."""
    if _USERINFO_PASSWORD.search(url) or _QUERY_PASSWORD.search(url):
        raise ValueError(
            f"store URL {masked(url)} carries a password: remove it and give --store-password-file FILE or PGPASSFILE"
        )


class PostgresStore(SqlStore):
    """Store in a PostgreSQL database; see the module docstring.

    Args:
        url: postgresql://user@host:port/dbname (no password in it).
        password_file: a file whose first line is the password (None: libpq's PGPASSFILE / ~/.pgpass).

    Raises:
        ValueError: a password in the URL, or an unreadable password file.
        ConnectError: the server refused the connection or could not be reached.
        SchemaVersionError: the database has a newer schema than this code.
    """

    PLACEHOLDER = "%s"
    GREATEST = "GREATEST"

    def __init__(self, url: str, *, password_file: Path | None = None, application_name: str = "modelfleet-control-plane") -> None:
        check_url(url)
        self.url = url
        extra: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": application_name}
        if password_file is not None:
            try:
                lines = password_file.read_text().splitlines()
            except OSError as exc:
                raise ValueError(f"cannot read the store password from {password_file}: {exc}") from None
            if not lines or not lines[0].strip():
                raise ValueError(f"the store password file {password_file} is empty; its first line is the password")
            extra["password"] = lines[0].strip()
        super().__init__()
        self._fencing = False
        self._epoch: int | None = None
        try:
            self._conn = psycopg.connect(url, autocommit=True, **extra)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            self._closed = True
            raise ConnectError(f"cannot connect to the store {masked(url)}: {_first_line(exc)}") from None
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            self._closed = True
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({masked(self.url)!r})"

    def _migrate(self) -> None:
        latest = len(_MIGRATIONS)
        with self.transaction():
            self._run("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            self._run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", ())
            rows = self._fetch("SELECT version FROM schema_version", ())
            if not rows:
                self._run("INSERT INTO schema_version (version) VALUES (0)", ())
                current = 0
            else:
                current = _int(rows[0][0])
            if current > latest:
                raise SchemaVersionError(
                    f"{masked(self.url)} has store schema version {current}; this modelfleet knows up to {latest}"
                )
            for step in range(current, latest):
                for statement in _MIGRATIONS[step]:
                    self._run(statement, ())
                logger.info("store %s: migrated schema to version %d", masked(self.url), step + 1)
            if current != latest:
                self._run("UPDATE schema_version SET version = %s", (latest,))

    def schema_version(self) -> int:
        row = self._query_one("SELECT version FROM schema_version", ())
        return 0 if row is None else _int(row[0])

    # ---- the leader lease (control_plane.leader) -------------------------------
    def campaign(self, *, holder: str, address: str, ttl_s: float) -> Lease:
        """Take the lease if it is free or expired, or renew ours; the lease as it is now.

        One autocommit statement (never fenced); the lease is ours iff the result's holder is `holder`."""
        self._check_open()
        self._check_thread()
        if self._tx_depth:
            raise RuntimeError("campaign() inside a transaction: the lease must commit on its own")
        self._run(_SEEN, (holder, address))
        rows = self._fetch(_CAMPAIGN, {"me": holder, "address": address, "ttl": float(ttl_s)})  # type: ignore[arg-type]
        if rows:
            return _lease(rows[0])
        lease = self.leader()
        assert lease is not None, "the leader row is created by the schema migration"
        return lease

    def leader(self) -> Lease | None:
        """The lease row now (None only before the schema has it)."""
        rows = self._query("SELECT holder, address, epoch, expires_at, now() FROM leader WHERE id = 1", ())
        return _lease(rows[0]) if rows else None

    def replicas(self) -> list[Replica]:
        """Every replica that ever campaigned, by holder id (seen_at: its last campaign)."""
        rows = self._query("SELECT holder, address, started_at, seen_at FROM replicas ORDER BY holder", ())
        return [Replica(str(h), str(a), _time(s), _time(n)) for h, a, s, n in rows]

    def forget_replicas(self, *, older_than_s: float) -> int:
        """Drop replicas not seen for `older_than_s` seconds (database clock)."""
        return self._run("DELETE FROM replicas WHERE seen_at < now() - make_interval(secs => %s)", (float(older_than_s),))

    def fence(self, epoch: int | None) -> None:
        """From now on every commit needs the lease at `epoch` (None: refuse every write, a standby)."""
        self._fencing = True
        self._epoch = epoch

    def _check_fence(self) -> None:
        rows = self._fetch("SELECT holder, address, epoch, expires_at, now() FROM leader WHERE id = 1 FOR SHARE", ())
        lease = _lease(rows[0]) if rows else None
        if self._epoch is None or lease is None or lease.epoch != self._epoch:
            mine = "no epoch (a standby)" if self._epoch is None else f"epoch {self._epoch}"
            now = "no lease" if lease is None else f"epoch {lease.epoch} held by {lease.address or '?'}"
            raise Fenced(f"not the leader; the leader is at {lease.address if lease else '?'} "
                         f"(this replica holds {mine}, the store's lease is {now}): nothing was written", leader=lease)

    # ---- statements (SqlStore) ------------------------------------------------
    def _run(self, sql: str, params: Sequence[object]) -> int:
        with self._conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.rowcount

    def _fetch(self, sql: str, params: Sequence[object]) -> list[tuple[object, ...]]:
        with self._conn.cursor() as cur:
            cur.execute(sql, params)
            return [tuple(row) for row in cur.fetchall()]

    # ---- transaction hooks and lifecycle --------------------------------------
    def _begin(self) -> None:
        self._conn.execute("BEGIN")

    def _commit(self) -> None:
        if self._fencing:
            self._check_fence()
        self._conn.execute("COMMIT")

    def _abort(self) -> None:
        try:
            if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self._conn.execute("ROLLBACK")
        except psycopg.Error:
            logger.exception("store %s: ROLLBACK failed", masked(self.url))

    def close(self) -> None:
        """Close the connection (rolling back an open transaction). Idempotent; later calls raise."""
        if self._closed:
            return
        self._closed = True
        self._tx_depth = 0
        self._abort()
        self._conn.close()


def _lease(row: tuple[object, ...]) -> Lease:
    holder, address, epoch, expires_at, now = row
    return Lease(str(holder), str(address), _int(epoch), _time(expires_at), _time(now))


def _time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    raise TypeError(f"expected a TIMESTAMPTZ column, got {type(value).__name__}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
