"""SQLite-only store tests: what the file adds to the Store contract.

TestSqliteStore runs the whole contract (StoreContract, tests/unit/store/test_store.py)
on SqliteStore, plus durability across close and reopen, commit before
return, the pragmas (WAL, synchronous=FULL), tables, indexes and schema
versions, migration on open, refusing a newer schema, a corrupt record as
DataLoss, and crash consistency: a writer subprocess
(tests/tools/store_crash_writer.py) is SIGKILLed mid-way and the file must
hold exactly a prefix of its acknowledged writes, none torn.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from storerecords import StoreFactory, allocation, deployment, model, node, request
from test_store import StoreContract

from control_plane.errors import DataLoss
from control_plane.store import SchemaVersionError, SqliteStore
from control_plane.store import sqlite as sqlite_mod

REPO_ROOT = Path(__file__).resolve().parents[3]
WRITER = REPO_ROOT / "tests" / "tools" / "store_crash_writer.py"


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def db_path(self, tmp_path: Path) -> Path:
        return tmp_path / "state" / "modelfleet.db"

    @pytest.fixture
    def make_store(self, db_path: Path) -> StoreFactory:
        return lambda: SqliteStore(db_path)

    # -- durability ------------------------------------------------------------------
    def test_everything_survives_close_and_reopen(self, make_store: StoreFactory) -> None:
        s = make_store()
        for v in (1, 2, 3):
            s.put_model(model("m", v))
        s.delete_model("m", 3)
        s.put_deployment(deployment("d1", revision=4))
        s.put_allocation(allocation("a1", deployment_id="d1", node_id="n1"))
        s.put_allocation(allocation("a2", deployment_id="d1", node_id="n2"))
        s.put_node(node("n1"))
        s.put_request(request("r1"))
        with s.transaction():
            s.put_deployment(deployment("d2"))
        s.close()

        s = make_store()
        try:
            assert [(m.model_id, m.version) for m in s.list_models()] == [("m", 1), ("m", 2)]
            assert s.max_model_version("m") == 3
            assert s.get_deployment("d1") == deployment("d1", revision=4)
            assert [d.deployment_id for d in s.list_deployments()] == ["d1", "d2"]
            assert [a.allocation_id for a in s.list_allocations(node_id="n2")] == ["a2"]
            assert s.get_node("n1") == node("n1")
            assert s.get_request("r1") == request("r1")
        finally:
            s.close()

    def test_write_is_committed_before_return(self, store: SqliteStore, db_path: Path) -> None:
        with closing(sqlite3.connect(db_path)) as other:
            store.put_deployment(deployment("d1"))
            assert other.execute("SELECT count(*) FROM deployments").fetchone() == (1,)
            with store.transaction():
                store.put_deployment(deployment("d2"))
                # another connection sees nothing of an open transaction
                assert other.execute("SELECT count(*) FROM deployments").fetchone() == (1,)
            assert other.execute("SELECT count(*) FROM deployments").fetchone() == (2,)

    def test_wal_and_synchronous_full(self, store: SqliteStore, db_path: Path) -> None:
        assert store._conn.execute("PRAGMA synchronous").fetchone() == (2,)
        with closing(sqlite3.connect(db_path)) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)

    def test_tables_indexes_and_schema_version(self, store: SqliteStore, db_path: Path) -> None:
        latest = len(sqlite_mod._MIGRATIONS)
        assert store.schema_version() == latest >= 3
        with closing(sqlite3.connect(db_path)) as other:
            names = {row[0] for row in other.execute("SELECT name FROM sqlite_master")}
            assert other.execute("SELECT version FROM schema_version").fetchall() == [(latest,)]
        tables = "models model_versions deployments allocations nodes requests event_logs api_keys schema_version"
        assert set(tables.split()) | {"allocations_by_deployment", "allocations_by_node"} <= names

    def test_migrates_on_open(self, make_store: StoreFactory, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        s = make_store()
        s.put_deployment(deployment("d1"))
        s.close()
        step = ("CREATE TABLE extra (k TEXT PRIMARY KEY)", "INSERT INTO extra (k) VALUES ('migrated')")
        monkeypatch.setattr(sqlite_mod, "_MIGRATIONS", (*sqlite_mod._MIGRATIONS, step))
        s = SqliteStore(db_path)
        try:
            assert s.schema_version() == len(sqlite_mod._MIGRATIONS)
            assert s.get_deployment("d1") == deployment("d1")
        finally:
            s.close()
        s = make_store()  # reopening does not run the step again (it would fail: table exists)
        s.close()
        with closing(sqlite3.connect(db_path)) as other:
            assert other.execute("SELECT k FROM extra").fetchall() == [("migrated",)]

    def test_refuses_a_newer_schema(self, make_store: StoreFactory, db_path: Path) -> None:
        make_store().close()
        with closing(sqlite3.connect(db_path)) as other, other:
            other.execute("UPDATE schema_version SET version = 99")
        with pytest.raises(SchemaVersionError, match="99"):
            make_store()

    def test_corrupt_blob_is_data_loss(self, store: SqliteStore, db_path: Path) -> None:
        store.put_deployment(deployment("d1"))
        with closing(sqlite3.connect(db_path)) as other, other:  # inner `other`: commit on exit
            other.execute("UPDATE deployments SET data = ? WHERE deployment_id = 'd1'", (b"\xff\xff\xff\xff",))
        with pytest.raises(DataLoss, match="d1"):
            store.get_deployment("d1")

    # -- crash consistency ---------------------------------------------------------------
    @pytest.mark.parametrize("kill_after", [1, 150, 600])
    def test_sigkill_loses_no_acknowledged_write(self, tmp_path: Path, kill_after: int) -> None:
        db = tmp_path / "crash.db"
        stderr_path = tmp_path / "writer.stderr"
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, str(WRITER), str(db), "1000000"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=REPO_ROOT,
            )
            assert proc.stdout is not None
            acked: list[str] = []
            try:
                while len(acked) < kill_after:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    acked.append(line.strip())
                os.kill(proc.pid, signal.SIGKILL)
                acked += proc.stdout.read().split()  # acknowledged before the kill landed
            finally:
                proc.kill()
                proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, stderr_path.read_text()
        assert len(acked) >= kill_after, stderr_path.read_text()
        assert acked == [_key(i) for i in range(len(acked))]

        store = SqliteStore(db)
        try:
            recovered = [d.deployment_id for d in store.list_deployments()]
            n = len(recovered)
            # a prefix of the write sequence, holding every acknowledged write
            # (plus at most the one committed just before its ack was printed)
            assert recovered == [_key(i) for i in range(n)]
            assert len(acked) <= n <= len(acked) + 1
            torn = 0
            for i, rec in enumerate(store.list_deployments()):
                alloc = store.get_allocation("a" + _key(i))
                if rec.revision != i or rec.stop_reason != _payload(i) or alloc is None or alloc.reason != _payload(i):
                    torn += 1
            assert torn == 0
            # the two writes of each step were one transaction: no orphan allocation
            assert len(store.list_allocations()) == n
            assert store.max_model_version("m") == n
        finally:
            store.close()
        with closing(sqlite3.connect(db)) as check:
            assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def _key(i: int) -> str:
    return f"d{i:07d}"


def _payload(i: int) -> str:
    # ~12 KiB per record, so one record spans several 4 KiB pages
    return hashlib.sha256(_key(i).encode()).hexdigest() * 192
