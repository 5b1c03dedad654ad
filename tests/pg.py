"""A private PostgreSQL server for tests: initdb + pg_ctl in a temp dir, on a
free port of 127.0.0.1, trust auth, as the unprivileged `postgres` user when
we are root (the server refuses to run as root); stopped at the end.

`postgres_server` (a fixture tests/conftest.py registers) is the session's
server; `fresh_database(server)` a new empty database on it, as a
postgresql:// URL; `password_database` one whose owner must log in with a
password (scram-sha-256), for the password file and PGPASSFILE. Where no
PostgreSQL is installed the tests FAIL saying how to install it (CI installs
Debian's `postgresql` package through scripts/test-deps.sh), unless
MODELFLEET_TESTS_WITHOUT_POSTGRES=1 is set, which skips them, saying so.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_COUNTER = itertools.count()
OPT_OUT = "MODELFLEET_TESTS_WITHOUT_POSTGRES"
# The one role that must log in with a password (scram-sha-256); every other
# role gets trust auth on 127.0.0.1. `password_database` creates it.
PASSWORD_USER = "mf_password"


@dataclass
class PgServer:
    root: Path
    port: int
    bin_dir: Path
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _as_owner([str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), *args], self.user)


def find_bin_dir() -> Path | None:
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_owner(argv: list[str], user: str) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + argv, capture_output=True, text=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server() -> PgServer:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get(OPT_OUT) == "1":
            pytest.skip(f"no PostgreSQL here and {OPT_OUT}=1: the PostgreSQL store is not tested")
        pytest.fail("PostgreSQL is not installed (no initdb): run `sh scripts/test-deps.sh` (Debian's postgresql "
                    f"package), or set {OPT_OUT}=1 to skip these tests knowingly")  # fmt: skip
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    root = Path(tempfile.mkdtemp(prefix="modelfleet-pg-"))
    os.chmod(root, 0o755)
    (root / "data").mkdir()
    (root / "sock").mkdir()
    (root / "log").mkdir()
    if os.geteuid() == 0:
        for p in (root / "data", root / "sock", root / "log"):
            shutil.chown(p, user, user)
    init = _as_owner([str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", user, "-A", "trust", "-E", "UTF8",
                      "--no-sync"], user)  # fmt: skip
    assert init.returncode == 0, init.stdout + init.stderr
    _require_password_for(root / "data" / "pg_hba.conf", PASSWORD_USER)
    for _ in range(5):
        port = _free_port()  # PostgreSQL cannot be told "any port"; a taken one fails start, then another is tried
        server = PgServer(root=root, port=port, bin_dir=bin_dir, user=user)
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root / 'sock'} -c fsync=on"
        started = server.ctl("-w", "-t", "60", "-l", str(root / "log" / "server.log"), "-o", options, "start")
        if started.returncode == 0:
            return server
    log = root / "log" / "server.log"
    raise AssertionError(f"PostgreSQL did not start: {started.stderr}\n{log.read_text()[-2000:] if log.exists() else ''}")


def _require_password_for(hba: Path, user: str) -> None:
    """Put a scram-sha-256 line for `user` first in pg_hba.conf (the first matching line wins)."""
    hba.write_text(f"host all {user} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())


def stop_server(server: PgServer) -> None:
    server.ctl("-m", "immediate", "stop")
    shutil.rmtree(server.root, ignore_errors=True)


def fresh_database(server: PgServer) -> str:
    import psycopg

    name = f"t{os.getpid()}_{next(_COUNTER)}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)


def password_database(server: PgServer, password: str) -> str:
    """A new database owned by PASSWORD_USER, whose login needs `password`; its URL (no password in it)."""
    import psycopg
    from psycopg import sql

    url = fresh_database(server)
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server.url(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PASSWORD_USER,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(PASSWORD_USER), sql.Literal(password)))
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(PASSWORD_USER)))
    return f"postgresql://{PASSWORD_USER}@127.0.0.1:{server.port}/{name}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)
