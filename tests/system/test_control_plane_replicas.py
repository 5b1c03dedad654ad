"""Two control-plane replicas on one PostgreSQL database (tests/pg.py), one
agent and a gateway given both addresses, one deployment, all real processes:

- kill -9 the leader: the standby takes the lease within lease + renew (plus
  slack for a loaded box), the agent re-attaches to it with its worker
  untouched, the deployment stays STARTED and calls through the gateway keep
  being answered, 0 failed;
- SIGSTOP the leader past its lease: the other takes over; SIGCONT: the old
  leader commits nothing (a trigger-kept audit of every committed write,
  by connection name, does not grow) and exits, saying it stepped down;
- a mutation on a standby: UNAVAILABLE "not the leader; the leader is at
  ADDR" with ADDR in the trailing metadata `modelfleet-leader`; reads on it
  answer from the database; `modelfleet status` lists both replicas.
Timings are shrunk: lease 2 s, renewed every 0.5 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import psycopg
import pytest
from cluster import Cluster, Proc, authed_channel, wait_until
from figures import record
from gatewayproc import GatewayProc, start_gateway
from modelbuild import onnx_add
from pg import PgServer, fresh_database  # postgres_server: tests/conftest.py registers pg

from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.inference import grpc_service_pb2_grpc as pb_grpc
from modelfleet.v1 import auth_pb2, common_pb2, models_pb2
from modelfleet.v1 import auth_pb2_grpc as auth_grpc
from modelfleet.v1 import controlplanes_pb2 as cpb
from modelfleet.v1 import controlplanes_pb2_grpc as cp_grpc
from modelfleet.v1 import deployments_pb2 as dpb
from modelfleet.v1 import deployments_pb2_grpc as dp_grpc
from modelfleet.v1 import models_pb2_grpc as models_grpc
from modelfleet.v1 import nodes_pb2 as npb
from modelfleet.v1 import nodes_pb2_grpc as np_grpc

LEASE_S, RENEW_S = 2.0, 0.5
TAKEOVER_SLACK_S = 4.0  # a loaded 2-core box: process scheduling on top of lease + renew
HA_ARGS = ["--lease", str(LEASE_S), "--lease-renew", str(RENEW_S), "--keepalive-min-ping-interval", "0.5"]
AGENT_ARGS = ["--keepalive-time", "1", "--keepalive-timeout", "1"]
T = TypeVar("T")
X = np.arange(4, dtype=np.float32).reshape(1, 4)


@dataclass
class Pair:
    c: Cluster  # replica A is the cluster's control plane
    url: str
    b: Proc
    b_addr: str
    gateway: GatewayProc | None = None
    extra: list[Proc] = field(default_factory=list)

    @property
    def a_addr(self) -> str:
        return self.c.addr.split(",")[0]

    def status(self, addr: str) -> cpb.ListControlPlanesResponse:
        return _status(addr, self.c.token)

    def nodes_on(self, addr: str) -> list[npb.Node]:
        with authed_channel(addr, self.c.token) as channel:
            return list(np_grpc.NodesStub(channel).ListNodes(npb.ListNodesRequest(), timeout=10).nodes)

    def deployment_on(self, addr: str) -> dpb.Deployment:
        with authed_channel(addr, self.c.token) as channel:
            return dp_grpc.DeploymentsStub(channel).GetDeployment(dpb.GetDeploymentRequest(deployment_id="add"), timeout=10)


def _answered(fn: Callable[[], T]) -> T | None:
    """fn(), or None while the replica is switching from standby to leader (its port rebinds)."""
    try:
        return fn()
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return None


def _status(addr: str, token: str) -> cpb.ListControlPlanesResponse:
    with authed_channel(addr, token) as channel:
        return cp_grpc.ControlPlanesStub(channel).ListControlPlanes(cpb.ListControlPlanesRequest(), timeout=10)


def _start_b(c: Cluster, url: str) -> tuple[Proc, str]:
    data = c.root / "cp-b"
    data.mkdir(parents=True, exist_ok=True)
    proc = Proc("control-plane-b", [sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0", "--data-dir",
                str(data), "--heartbeat-interval", "0.2", "--node-timeout", "1", "--recovery-grace", "30",
                "--store", url, *HA_ARGS], log_path=c.root / "cp-b.log")  # fmt: skip

    def endpoint() -> str:
        assert proc.alive(), proc.log()[-3000:]
        path = data / "endpoint"
        return path.read_text().strip() if path.exists() else ""

    return proc, wait_until(endpoint, timeout=60, what="replica B's endpoint file")


@pytest.fixture
def pair(tmp_path: Path, postgres_server: PgServer) -> Iterator[Pair]:
    url = fresh_database(postgres_server)
    c = Cluster(tmp_path, recovery_grace=30, cp_args=["--store", url, *HA_ARGS])
    p: Pair | None = None
    try:
        c.start_control_plane()  # A: alone, it takes the lease and bootstraps the admin key
        wait_until(lambda: _status(c.addr, c.token).leader_address == c.addr, timeout=30, what="replica A leading")
        b, b_addr = _start_b(c, url)
        p = Pair(c, url, b, b_addr)
        yield p
    finally:
        if p is not None:
            if p.gateway is not None:
                p.gateway.stop()
            p.b.stop()
            for proc in p.extra:
                proc.stop()
        c.addr = c.addr.split(",")[0]
        c.close()


def _deploy(p: Pair) -> None:
    c = p.c
    both = f"{p.a_addr},{p.b_addr}"
    c.addr = both  # the agent (and the gateway below) get both replicas
    c.start_agent("node-a", cpus=2, extra_args=AGENT_ARGS)
    c.addr = p.a_addr
    c.wait_nodes(1, timeout=60)
    c.upload(onnx_add(c.root / "add.onnx"), "add")
    req = dpb.StartDeploymentRequest(model_id="add", wait_for=dpb.WAIT_FOR_STARTED)
    req.timeout.FromSeconds(60)
    c.deployments.StartDeployment(req, timeout=90)
    p.gateway = start_gateway(c, "gw", control_plane=both)


def _request() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="add")
    req.inputs.add(name="x", datatype="FP32", shape=list(X.shape))
    req.raw_input_contents.append(X.tobytes())
    return req


class Caller(threading.Thread):
    """Inference through the gateway in a loop, counting answers and failures."""

    def __init__(self, address: str, token: str) -> None:
        super().__init__(daemon=True)
        self.channel = authed_channel(address, token)
        self.ok = 0
        self.failed: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        while not self.halt.is_set():
            try:
                stub.ModelInfer(_request(), timeout=10)
                self.ok += 1
            except grpc.RpcError as exc:
                self.failed.append(f"{exc.code().name}: {exc.details()}")
            self.halt.wait(0.02)

    def finish(self) -> None:
        self.halt.set()
        self.join(30)
        self.channel.close()


def _worker_pids(p: Pair) -> set[int]:
    out = subprocess.run(["pgrep", "-f", "node_agent.worker"], capture_output=True, text=True)
    return {int(pid) for pid in out.stdout.split()} & {int(x) for x in _descendants(p.c.agents["node-a"].pid)}


def _descendants(pid: int) -> list[str]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    kids = out.stdout.split()
    return kids + [g for k in kids for g in _descendants(int(k))]


def _leads(p: Pair, addr: str) -> bool:
    status = _answered(lambda: p.status(addr))
    return status is not None and status.leader_address == addr


def _ready_on(p: Pair, addr: str) -> bool:
    return _answered(lambda: [n.state for n in p.nodes_on(addr)]) == [npb.NODE_STATE_READY]


def _started_on(p: Pair, addr: str) -> bool:
    dep = p.deployment_on(addr)
    return [e.routing_state for e in dep.allocations[0].routing_table.values()] == [common_pb2.ROUTING_STATE_STARTED]


def test_kill_9_of_the_leader_the_standby_leads_and_nothing_stops(pair: Pair) -> None:
    p = pair
    _deploy(p)
    assert p.gateway is not None
    workers = wait_until(lambda: _worker_pids(p), timeout=30, what="the worker process")
    before = p.status(p.b_addr)
    assert (before.leader_address, before.epoch) == (p.a_addr, before.epoch)
    assert {r.address: r.role for r in before.replicas} == {p.a_addr: cpb.REPLICA_ROLE_LEADER, p.b_addr: cpb.REPLICA_ROLE_STANDBY}
    caller = Caller(p.gateway.address, p.c.create_key("inference", name="caller").token)
    caller.start()
    wait_until(lambda: caller.ok > 5, timeout=30, what="answered calls before the kill")
    assert p.c.cp is not None
    p.c.cp.kill()
    killed = time.monotonic()
    wait_until(lambda: _leads(p, p.b_addr), timeout=30, what="B leading")
    takeover = time.monotonic() - killed
    after = wait_until(lambda: _answered(lambda: p.status(p.b_addr)), timeout=30, what="B's status")
    record("control-plane failover (kill -9 of the leader)", "takeover", takeover, "s", note="lease 2 s, renew 0.5 s")
    assert takeover <= LEASE_S + RENEW_S + TAKEOVER_SLACK_S, f"took {takeover:.1f} s"
    assert after.epoch == before.epoch + 1
    wait_until(lambda: _ready_on(p, p.b_addr), timeout=60, what="the agent re-attached to B")
    wait_until(lambda: _answered(lambda: _started_on(p, p.b_addr)), timeout=30, what="the deployment STARTED on B")
    seen = caller.ok
    wait_until(lambda: caller.ok > seen + 20, timeout=30, what="calls answered after the takeover")
    caller.finish()
    assert caller.failed == [], caller.failed[:5]
    assert _worker_pids(p) == workers, "no worker was restarted"
    assert p.deployment_on(p.b_addr).status in (common_pb2.DEPLOYMENT_STATUS_RUNNING,)


AUDIT_SQL = """
CREATE TABLE write_audit (id BIGSERIAL PRIMARY KEY, client TEXT NOT NULL, tbl TEXT NOT NULL, at TIMESTAMPTZ NOT NULL);
CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO write_audit (client, tbl, at) VALUES (current_setting('application_name'), TG_TABLE_NAME, clock_timestamp());
  RETURN NULL;
END $$;
"""
AUDITED = ("models", "model_versions", "deployments", "allocations", "nodes", "requests", "event_logs", "api_keys")


def _audit(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(AUDIT_SQL)
        for table in AUDITED:
            conn.execute(f"CREATE TRIGGER audit_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
                         "FOR EACH STATEMENT EXECUTE FUNCTION audit_write()")  # fmt: skip


def _writes_by(url: str, replica_id: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM write_audit WHERE client = %s",
                           (f"modelfleet-control-plane {replica_id}",)).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0])


def test_a_leader_paused_past_its_lease_writes_nothing_after_it_resumes(pair: Pair) -> None:
    p = pair
    _audit(p.url)
    _deploy(p)
    old = p.status(p.a_addr)
    assert old.leader_address == p.a_addr
    assert _writes_by(p.url, old.leader_id) > 0, "the audit sees the leader's writes"
    assert p.c.cp is not None
    p.c.cp.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: _leads(p, p.b_addr), timeout=30, what="B leading")
        wait_until(lambda: _ready_on(p, p.b_addr), timeout=60, what="the agent re-attached to B")
        # a COMMIT the leader sent just before the pause completed long since (a whole lease ago)
        frozen = _writes_by(p.url, old.leader_id)
    finally:
        p.c.cp.signal(signal.SIGCONT)
    with authed_channel(p.a_addr, p.c.token) as channel:  # a mutation at the resumed, deposed leader
        with pytest.raises(grpc.RpcError) as refused:
            auth_grpc.AuthStub(channel).CreateApiKey(auth_pb2.CreateApiKeyRequest(roles=["viewer"]), timeout=10)
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE,), refused.value.details()
    code = p.c.cp.popen.wait(30)
    assert code == 3, p.c.cp.log()[-2000:]
    assert "no longer the leader" in p.c.cp.log()
    assert _writes_by(p.url, old.leader_id) == frozen, "the deposed leader committed a write after resuming"
    now = p.status(p.b_addr)
    assert now.leader_address == p.b_addr and now.epoch == old.epoch + 1
    wait_until(lambda: _answered(lambda: _started_on(p, p.b_addr)), timeout=30, what="the deployment STARTED on B")


def test_a_standby_refuses_mutations_naming_the_leader_and_answers_reads(pair: Pair) -> None:
    p = pair
    p.c.upload(onnx_add(p.c.root / "add.onnx"), "add")
    with authed_channel(p.b_addr, p.c.token) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            auth_grpc.AuthStub(channel).CreateApiKey(auth_pb2.CreateApiKeyRequest(roles=["viewer"]), timeout=10)
        err = refused.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert f"not the leader; the leader is at {p.a_addr}" in (err.details() or "")
        assert ("modelfleet-leader", p.a_addr) in tuple(err.trailing_metadata() or ())
        models = models_grpc.ModelRegistryStub(channel).ListModels(models_pb2.ListModelsRequest(), timeout=10).models
        assert [m.model_id for m in models] == ["add"], "the standby reads what the leader committed"
    env = {**os.environ, "MODELFLEET_TOKEN": p.c.token}
    status = subprocess.run([sys.executable, "-m", "modelfleet.cli", "--addr", f"{p.b_addr},{p.a_addr}", "status"],
                            capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert p.a_addr in status.stdout and p.b_addr in status.stdout and "standby" in status.stdout, status.stdout
    assert f"at {p.a_addr}, epoch" in status.stdout, status.stdout
    created = subprocess.run([sys.executable, "-m", "modelfleet.cli", "--addr", f"{p.b_addr},{p.a_addr}", "keys", "create",
                              "--role", "viewer"], capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert created.returncode == 0, created.stderr  # the CLI went to the leader

