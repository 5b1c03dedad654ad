"""The PostgreSQL store against a real server (tests/pg.py starts a private
one): the one Store contract suite, bare and behind the cache, reopening,
the schema version, URLs with passwords refused, a refused connection named
with the password masked, a password read from --store-password-file or
PGPASSFILE (and a wrong or missing one refused, never shown), and crash consistency: a writer process SIGKILLed
mid-way loses no acknowledged write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from pg import PgServer, fresh_database, password_database  # postgres_server: tests/conftest.py registers pg
from storerecords import StoreFactory, deployment
from test_store import StoreContract

from control_plane.store import StoreUnavailable, open_store
from control_plane.store.cached import CachedStore
from control_plane.store.postgres import PostgresStore, masked

REPO_ROOT = Path(__file__).resolve().parents[3]
WRITER = REPO_ROOT / "tests" / "tools" / "store_crash_writer.py"


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def make_store(self, postgres_server: PgServer) -> StoreFactory:
        url = fresh_database(postgres_server)
        return lambda: PostgresStore(url)

    def test_reopen_keeps_records_and_the_schema_version(self, make_store: StoreFactory) -> None:
        s = make_store()
        s.put_deployment(deployment("d1"))
        s.close()
        again = make_store()
        try:
            assert again.get_deployment("d1") == deployment("d1")
            assert isinstance(again, PostgresStore) and again.schema_version() == 2
        finally:
            again.close()


class TestCachedPostgresStore(StoreContract):
    @pytest.fixture
    def make_store(self, postgres_server: PgServer) -> StoreFactory:
        url = fresh_database(postgres_server)
        return lambda: CachedStore(PostgresStore(url))


def test_open_store_takes_postgresql_urls_and_a_password_file(postgres_server: PgServer, tmp_path: Path) -> None:
    url = fresh_database(postgres_server)
    secret = tmp_path / "pw"
    secret.write_text("unused-with-trust-auth\n")
    for location in (url, url.replace("postgresql://", "postgres://")):
        s = open_store(location, password_file=secret)
        assert isinstance(s, PostgresStore)
        s.close()


def test_the_password_comes_from_the_password_file(postgres_server: PgServer, tmp_path: Path) -> None:
    url = password_database(postgres_server, "s3cret-one")
    secret = tmp_path / "pw"
    secret.write_text("s3cret-one\n")
    s = open_store(url, password_file=secret)
    try:
        s.put_deployment(deployment("d1"))
        assert s.get_deployment("d1") == deployment("d1")
    finally:
        s.close()
    secret.write_text("wrong-password\n")
    with pytest.raises(StoreUnavailable, match=rf"cannot connect to the store {url}: .*password") as err:
        open_store(url, password_file=secret)
    assert "wrong-password" not in str(err.value)


def test_the_password_comes_from_pgpassfile(
    postgres_server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = password_database(postgres_server, "s3cret-two")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(StoreUnavailable, match=rf"cannot connect to the store {url}: .*password"):
        open_store(url)  # no password anywhere: refused, one line
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgres_server.port}:*:mf_password:s3cret-two\n")
    passfile.chmod(0o600)  # libpq ignores a pgpass file others can read
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    s = open_store(url)
    try:
        assert isinstance(s, PostgresStore) and s.schema_version() == 2
    finally:
        s.close()


def test_a_password_in_the_url_is_refused_and_never_shown() -> None:
    with pytest.raises(ValueError, match=r"postgresql://mf:\*\*\*@db:5432/x carries a password") as err:
        open_store("postgresql://mf:hunter2@db:5432/x")
    assert "hunter2" not in str(err.value)
    assert masked("postgresql://u:p@h/d") == "postgresql://u:***@h/d" and masked("postgresql://u@h/d") == "postgresql://u@h/d"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://:pw@db/x", "postgresql://:***@db/x"),
        ("postgresql://mf:p@ss@db:5432/x", "postgresql://mf:***@db:5432/x"),
        ("postgresql://mf@db/x?sslmode=require&password=pw", "postgresql://mf@db/x?sslmode=require&password=***"),
        ("postgres://mf@db/x?PASSWORD=pw&sslmode=require", "postgres://mf@db/x?PASSWORD=***&sslmode=require"),
    ],
)
def test_every_spelling_of_a_password_in_the_url_is_refused_masked(url: str, shown: str) -> None:
    with pytest.raises(ValueError, match="carries a password") as err:
        open_store(url)
    assert shown in str(err.value) and "pw" not in str(err.value).replace(shown, "") and "ss@" not in str(err.value)


@pytest.mark.parametrize("content", ["", "\n", "   \nsecond-line\n"])
def test_an_empty_password_file_is_refused_naming_it(tmp_path: Path, content: str) -> None:
    secret = tmp_path / "pw"
    secret.write_text(content)
    with pytest.raises(ValueError, match=rf"the store password file {secret} is empty; its first line is the password"):
        open_store("postgresql://mf@127.0.0.1:1/x", password_file=secret)
    with pytest.raises(ValueError, match=rf"cannot read the store password from {tmp_path / 'missing'}"):
        open_store("postgresql://mf@127.0.0.1:1/x", password_file=tmp_path / "missing")


def test_a_refused_connection_names_the_url(postgres_server: PgServer) -> None:
    dead = f"postgresql://nobody@127.0.0.1:{postgres_server.port + 1}/none"
    with pytest.raises(StoreUnavailable, match=rf"cannot connect to the store {dead}"):
        open_store(dead)


@pytest.mark.parametrize("kill_after", [1, 300])
def test_sigkill_loses_no_acknowledged_write(postgres_server: PgServer, kill_after: int) -> None:
    url = fresh_database(postgres_server)
    proc = subprocess.Popen([sys.executable, str(WRITER), url, "1000000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)  # fmt: skip
    assert proc.stdout is not None
    acked: list[str] = []
    try:
        while len(acked) < kill_after:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        acked += proc.stdout.read().split()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert len(acked) >= kill_after, proc.stderr.read() if proc.stderr else ""
    store = PostgresStore(url)
    try:
        recovered = [d.deployment_id for d in store.list_deployments()]
        assert recovered[: len(acked)] == acked and len(acked) <= len(recovered) <= len(acked) + 1
        assert len(store.list_allocations()) == len(recovered) and store.max_model_version("m") == len(recovered)
    finally:
        store.close()
    with psycopg.connect(url) as conn:  # nothing half-written was left for another reader
        (count,) = conn.execute("SELECT count(*) FROM allocations").fetchone() or (0,)
        assert count == len(recovered)
