"""A real control plane on a real PostgreSQL server (`--store postgresql://`):
a deployment started, inference answered, the control plane restarted with
its state intact; a control plane logging in with --store-password-file;
a refused database at start-up is one clear line naming the
URL, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import ROOT, Cluster, wait_until
from modelbuild import onnx_add
from pg import PgServer, fresh_database, password_database  # postgres_server: tests/conftest.py registers pg

from modelfleet.v1 import common_pb2
from modelfleet.v1 import deployments_pb2 as dpb


@pytest.fixture
def cluster(tmp_path: Path, postgres_server: PgServer) -> Iterator[Cluster]:
    c = Cluster(tmp_path, cp_args=["--store", fresh_database(postgres_server)])
    try:
        c.start_control_plane()
        yield c
    finally:
        c.close()


def test_state_on_postgresql_survives_a_restart_and_serves(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    c.start_agent("node-a", cpus=2)
    c.wait_nodes(1)
    c.upload(onnx_add(tmp_path / "add.onnx"), "add")
    req = dpb.StartDeploymentRequest(model_id="add", wait_for=dpb.WAIT_FOR_STARTED)
    req.timeout.FromSeconds(60)
    c.deployments.StartDeployment(req, timeout=90)
    before = c.get("add")
    c.cp.stop()
    c.start_control_plane(listen=c.addr)
    after = c.get("add")
    assert after.revision == before.revision and after.status == before.status
    assert [a.allocation_id for a in after.allocations[0].routing_table.values()] == [
        a.allocation_id for a in before.allocations[0].routing_table.values()
    ]
    assert not list((c.root / "cp").glob("*.db")), "the state went to PostgreSQL, not a SQLite file"
    c.wait_nodes(1)  # the agent is back on the restarted control plane
    env = {**os.environ, "MODELFLEET_ADDR": c.addr, "MODELFLEET_TOKEN": c.token}

    def infer() -> subprocess.CompletedProcess[str] | None:
        out = subprocess.run([sys.executable, "-m", "modelfleet.cli", "infer", "add", "--input", "x=[[1,2,3,4]]", "--json"],
                             capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        return out if out.returncode == 0 else None

    out = wait_until(infer, timeout=30, what="an answered inference after the restart")
    assert json.loads(out.stdout)["outputs"], out.stdout
    assert c.get("add").status in (common_pb2.DEPLOYMENT_STATUS_RUNNING, common_pb2.DEPLOYMENT_STATUS_CONCERNING)


def test_a_control_plane_logs_in_with_its_password_file(tmp_path: Path, postgres_server: PgServer) -> None:
    url = password_database(postgres_server, "cp-s3cret")
    secret = tmp_path / "store-password"
    secret.write_text("cp-s3cret\n")
    secret.chmod(0o600)
    c = Cluster(tmp_path, cp_args=["--store", url, "--store-password-file", str(secret)])
    try:
        c.start_control_plane()
        c.start_agent("node-a", cpus=1)
        assert [n.node_id for n in c.wait_nodes(1)] == [c.node_id("node-a")]  # registered: written to the database
        assert "cp-s3cret" not in " ".join(map(str, c.cp.popen.args))  # not on the command line
    finally:
        c.close()


def test_a_database_that_refuses_is_one_clear_line(tmp_path: Path, postgres_server: PgServer) -> None:
    url = f"postgresql://nobody@127.0.0.1:{postgres_server.port + 1}/none"
    proc = subprocess.run([sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0", "--data-dir",
                           str(tmp_path / "cp"), "--store", url], capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert proc.returncode != 0
    assert f"error: cannot connect to the store {url}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    with_password = subprocess.run([sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0", "--data-dir",
                                    str(tmp_path / "cp"), "--store", "postgresql://mf:hunter2@127.0.0.1/x"],
                                   capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert with_password.returncode != 0 and "hunter2" not in with_password.stderr
    assert "carries a password: remove it and give --store-password-file FILE or PGPASSFILE" in with_password.stderr
