"""Durable state of the control plane behind one interface (see base.Store).

`open_store` turns the operator's `--data-dir` (or a store URL) into a Store:

- `memory://` -> MemoryStore (nothing survives the process; tests, demos);
- `postgresql://user@host:port/db` (or `postgres://`) -> PostgresStore; the
  password comes from `password_file` or libpq's PGPASSFILE, never the URL;
- `sqlite://PATH` -> SqliteStore on the file PATH: everything after
  `sqlite://` is the path, so `sqlite:///var/lib/mf/state.db` is absolute
  and `sqlite://state.db` is relative to the working directory (this is
  plain URL reading, not SQLAlchemy's four-slash convention);
- any other string is a file system path: an existing directory, or a path
  that does not exist and has no `.db`/`.sqlite`/`.sqlite3` suffix, is a data
  directory (created if needed) holding `modelfleet.db`; anything else is the
  database file itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from control_plane.store.base import Store
from control_plane.store.memory import MemoryStore
from control_plane.store.sqlite import DEFAULT_FILENAME, SchemaVersionError, SqliteStore

__all__ = ["MemoryStore", "SchemaVersionError", "SqliteStore", "Store", "StoreUnavailable", "open_store"]


class StoreUnavailable(RuntimeError):
    """The store's server could not be reached or refused us (the message names it, password masked)."""

_DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def open_store(url_or_path: str | os.PathLike[str], *, password_file: Path | None = None, client_name: str = "") -> Store:
    """Open the store named by a URL or a path (see the module docstring).

    client_name: how a database server names this connection (PostgreSQL's application_name).

    Raises:
        ValueError: an empty location, an unknown URL scheme, a password in a URL.
        StoreUnavailable: a database server that cannot be reached or refuses us.
    """
    location = os.fspath(url_or_path)
    if not location:
        raise ValueError("store location is empty; give a data directory, sqlite://PATH, postgresql://... or memory://")
    if location == "memory://":
        return MemoryStore()
    if location.startswith(("postgresql://", "postgres://")):
        try:
            from control_plane.store import postgres  # psycopg is needed only for this store
        except ImportError as exc:
            raise ValueError(f"the PostgreSQL store needs psycopg ({exc}): pip install 'modelfleet[postgres]'") from None
        try:
            named = {"application_name": client_name} if client_name else {}
            return postgres.PostgresStore(location, password_file=password_file, **named)
        except postgres.ConnectError as exc:
            raise StoreUnavailable(str(exc)) from None
    if location.startswith("sqlite://"):
        file = location[len("sqlite://") :]
        if not file:
            raise ValueError(f"store URL {location!r} names no file; use sqlite:///absolute/path.db")
        return SqliteStore(file)
    if "://" in location:
        raise ValueError(f"unknown store URL {location!r}; use sqlite://PATH, postgresql://..., memory:// or a data directory")
    path = Path(location)
    if path.is_dir() or (not path.exists() and path.suffix.lower() not in _DB_SUFFIXES):
        path.mkdir(parents=True, exist_ok=True)
        return SqliteStore(path / DEFAULT_FILENAME)
    return SqliteStore(path)
