"""Fleet join through real processes: one join token for many hosts, each
then on its own key; use count and expiry; revocation of the join token and
of a node's key; agents refused for good exit; the CLI's choice of key."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster import Cluster, Proc, authed_channel, wait_until
from google.protobuf import duration_pb2

from modelfleet.v1 import auth_pb2, auth_pb2_grpc, models_pb2, models_pb2_grpc, nodes_pb2

EXIT_REFUSED = 78


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("join"))
    c.start_control_plane()
    try:
        yield c
    finally:
        c.close()


def join_token(c: Cluster, name: str, **fields: object) -> tuple[str, Path]:
    created = c.create_key("agent", join=True, name=name, **fields)
    path = c.root / f"{name}.token"
    path.write_text(created.token + "\n")
    return created.api_key.key_id, path


def agent(c: Cluster, name: str, token_file: Path, *, addr: str = "") -> Proc:
    args = [sys.executable, "-m", "node_agent.main", "--control-plane", addr or c.addr, "--data-dir", str(c.root / name),
            "--cpus", "1", "--drain-timeout", "5", "--token-file", str(token_file)]  # fmt: skip
    proc = Proc(name, args, log_path=c.root / f"{name}.log")
    c.agents[name] = proc
    return proc


def joined(c: Cluster, *names: str) -> bool:
    """Each agent has written the key its join issued it (the node is READY a moment before)."""
    return all((c.root / name / "node.key").exists() for name in names)


def ready_nodes(c: Cluster) -> set[str]:
    return {n.node_id for n in c.nodes.ListNodes(nodes_pb2.ListNodesRequest()).nodes if n.state == nodes_pb2.NODE_STATE_READY}


def key(c: Cluster, key_id: str) -> auth_pb2.ApiKey:
    listed = auth_pb2_grpc.AuthStub(c.channel).ListApiKeys(auth_pb2.ListApiKeysRequest(include_inactive=True))
    return next(k for k in listed.api_keys if k.key_id == key_id)


def refused_exit(proc: Proc, *, why: str) -> str:
    """The agent exits EXIT_REFUSED with exactly one ERROR line, naming why; that line."""
    code = wait_until(lambda: proc.popen.poll(), timeout=30, what=f"{proc.name} to exit")
    errors = [ln for ln in proc.log().splitlines() if " ERROR " in ln]
    assert code == EXIT_REFUSED, proc.log()[-2000:]
    assert len(errors) == 1 and why in errors[0] and "refused this agent for good" in errors[0], errors
    return errors[0]


def test_hosts_join_with_one_token_then_act_on_their_own_keys(cluster: Cluster) -> None:
    join_id, token_file = join_token(cluster, "fleet", max_uses=2)
    agent(cluster, "a", token_file)
    agent(cluster, "b", token_file)
    a_id, b_id = cluster.node_id("a"), cluster.node_id("b")
    wait_until(lambda: joined(cluster, "a", "b") and {a_id, b_id} <= ready_nodes(cluster), timeout=30, what="a and b joined")
    node_keys = {k.node_id: k for k in auth_pb2_grpc.AuthStub(cluster.channel).ListApiKeys(auth_pb2.ListApiKeysRequest()).api_keys}
    for name, node_id in (("a", a_id), ("b", b_id)):
        node_key = cluster.root / name / "node.key"
        assert stat.S_IMODE(node_key.stat().st_mode) == 0o600
        assert node_key.read_text().strip().startswith(f"mfk_{node_keys[node_id].key_id}_")
        assert list(node_keys[node_id].roles) == ["agent"]
    assert (key(cluster, join_id).uses, key(cluster, join_id).active) == (2, False)

    third = agent(cluster, "c", token_file)  # the use count is spent
    refused_exit(third, why="used up")

    auth_pb2_grpc.AuthStub(cluster.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=join_id))
    # the joined nodes stay; a's restart without the join token runs on its own key
    assert cluster.agents["a"].stop() == 0
    token_file.unlink()
    restarted = agent(cluster, "a", token_file)
    wait_until(lambda: {a_id, b_id} <= ready_nodes(cluster), timeout=30, what="a READY again on its own key")
    assert restarted.alive() and "node credential file" not in restarted.log()

    b_key = next(k for k in auth_pb2_grpc.AuthStub(cluster.channel).ListApiKeys(auth_pb2.ListApiKeysRequest()).api_keys
                 if k.node_id == b_id)  # fmt: skip
    auth_pb2_grpc.AuthStub(cluster.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=b_key.key_id))
    line = refused_exit(cluster.agents["b"], why="was revoked")
    assert str(cluster.root / "b" / "node.key") in line
    wait_until(lambda: b_id not in ready_nodes(cluster), timeout=30, what="b evicted")
    assert a_id in ready_nodes(cluster)


def test_an_expired_join_token_is_refused(cluster: Cluster) -> None:
    join_id, token_file = join_token(cluster, "brief", ttl=duration_pb2.Duration(seconds=1))
    wait_until(lambda: not key(cluster, join_id).active, timeout=10, what="the join token to expire")
    line = refused_exit(agent(cluster, "late", token_file), why="expired")
    assert str(token_file) in line
    assert not (cluster.root / "late" / "node.key").exists()


def test_revoking_the_join_token_stops_new_joins_only(cluster: Cluster) -> None:
    join_id, token_file = join_token(cluster, "open")  # no use count: only revocation stops it
    agent(cluster, "d", token_file)
    agent(cluster, "e", token_file)
    d_id, e_id = cluster.node_id("d"), cluster.node_id("e")
    wait_until(lambda: joined(cluster, "d", "e") and {d_id, e_id} <= ready_nodes(cluster), timeout=30, what="d and e joined")
    assert key(cluster, join_id).uses == 2

    auth_pb2_grpc.AuthStub(cluster.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=join_id))
    line = refused_exit(agent(cluster, "f", token_file), why="was revoked")
    assert str(token_file) in line and not (cluster.root / "f" / "node.key").exists()
    assert key(cluster, join_id).uses == 2
    # the joined nodes keep their streams: both are still READY after the refusal was answered
    assert {d_id, e_id} <= ready_nodes(cluster)
    assert cluster.agents["d"].alive() and cluster.agents["e"].alive()


def test_an_unreachable_control_plane_is_retried_not_fatal(cluster: Cluster) -> None:
    _, token_file = join_token(cluster, "patient")
    with socket.socket() as closed:  # bound, never listening: every connect is refused (UNAVAILABLE)
        closed.bind(("127.0.0.1", 0))
        proc = agent(cluster, "g", token_file, addr=f"127.0.0.1:{closed.getsockname()[1]}")
        wait_until(lambda: proc.log().count("reconnecting to") >= 2, timeout=30, what="g to retry twice")
        assert proc.alive(), proc.log()[-2000:]
        assert " ERROR " not in proc.log()
        assert proc.stop() == 0


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "modelfleet.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_the_cli_sends_a_local_admin_key_only_to_its_own_control_plane(cluster: Cluster, tmp_path: Path) -> None:
    # a stopped `modelfleet up` left its key and endpoint: another address, so it is not sent here
    up = tmp_path / ".modelfleet" / "control-plane"
    up.mkdir(parents=True)
    (up / "admin.key").write_text(cluster.token + "\n")
    (up / "endpoint").write_text("127.0.0.1:1\n")
    result = cli(tmp_path, "--addr", cluster.addr, "keys", "list")
    assert result.returncode == 1 and "UNAUTHENTICATED" in result.stderr and "no API key was sent" in result.stderr
    # a stale key left by an earlier control plane at this very address: refused, naming its file
    own = tmp_path / "cp"
    own.mkdir()
    (own / "admin.key").write_text("mfk_0123456789abcdef_" + "A" * 43 + "\n")
    (own / "endpoint").write_text(cluster.addr + "\n")
    result = cli(tmp_path, "--addr", cluster.addr, "keys", "list")
    assert result.returncode == 1 and "invalid API key" in result.stderr
    assert f"came from the admin key file {Path('cp/admin.key')}" in result.stderr
    (own / "admin.key").write_text(cluster.token + "\n")
    assert cli(tmp_path, "--addr", cluster.addr, "keys", "list").returncode == 0


def test_a_join_token_may_only_register_a_node(cluster: Cluster) -> None:
    created = cluster.create_key("agent", join=True, name="only-joins")
    stub = models_pb2_grpc.ModelRegistryStub(authed_channel(cluster.addr, created.token))
    with pytest.raises(grpc.RpcError) as err:
        next(iter(stub.DownloadModel(models_pb2.DownloadModelRequest(model_id="any"), timeout=10)))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "is a join token: it may only register a node (/modelfleet.v1.AgentControl/Connect)" in (err.value.details() or "")
