"""First-hour edges of issue 13 through a real control plane and the real CLI
in a child process: uploads (a bad id refused at once, the same bytes answer
with the existing version), TorchScript without input specs, code-loading
variables in a deployment's env."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, wait_until
from modelbuild import onnx_add, torchscript_add


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("first-hour"))
    try:
        c.start_control_plane()
        yield c
    finally:
        c.close()


def cli(cluster: Cluster, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELFLEET_ADDR": cluster.addr, "MODELFLEET_TOKEN": token or cluster.token}
    return subprocess.run([sys.executable, "-m", "modelfleet.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)


def test_a_bad_model_id_is_refused_before_the_bytes_are_sent(cluster: Cluster, tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(1 << 20) * 64)
    out = cli(cluster, "models", "upload", str(big), "--model-id", "Bad Name!")
    assert out.returncode == 1
    assert "error: INVALID_ARGUMENT: model_id 'Bad Name!' is invalid" in out.stderr
    # progress lines come every 10 %: the refusal arrived before a tenth was sent
    sent = [int(m) for m in re.findall(r"\((\d+)/\d+ bytes\)", out.stderr)]
    assert max(sent, default=0) < big.stat().st_size // 10, out.stderr


def test_the_same_bytes_again_answer_with_the_existing_version(cluster: Cluster, tmp_path: Path) -> None:
    path = onnx_add(tmp_path / "add.onnx")
    first = cli(cluster, "models", "upload", str(path), "--model-id", "same")
    assert first.returncode == 0, first.stderr
    again = cli(cluster, "models", "upload", str(path), "--model-id", "same")
    assert again.returncode == 0, again.stderr
    assert "version:     1" in first.stdout and again.stdout == first.stdout
    new = cli(cluster, "models", "upload", str(path), "--model-id", "same", "--new-version")
    assert new.returncode == 0, new.stderr
    assert "version:     2" in new.stdout
    listed = cli(cluster, "models", "list", "same")
    assert [line.split()[1] for line in listed.stdout.splitlines()[1:]] == ["1", "2"]


def test_torchscript_without_input_specs_is_refused_saying_how_to_declare(cluster: Cluster, tmp_path: Path) -> None:
    path = torchscript_add(tmp_path / "add.pt")
    out = cli(cluster, "models", "upload", str(path), "--model-id", "ts-undeclared")
    assert out.returncode == 2 and out.stdout == ""
    assert "declare every argument of forward with --input NAME:DTYPE:DIMS, e.g. --input x:FP32:-1,4" in out.stderr
    assert "ts-undeclared" not in cli(cluster, "models", "list").stdout
    ok = cli(cluster, "models", "upload", str(path), "--model-id", "ts-declared", "--input", "x:FP32:-1,4")
    assert ok.returncode == 0, ok.stderr
    assert "inputs:      x:FP32:[-1, 4]" in ok.stdout


def test_keys_create_output_writes_0600_and_keeps_an_existing_file(cluster: Cluster, tmp_path: Path) -> None:
    key_file = tmp_path / "agent.key"
    out = cli(cluster, "keys", "create", "--role", "agent", "--name", "first-hour", "--output", str(key_file))
    assert out.returncode == 0, out.stderr
    token = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600 and token not in out.stdout
    assert f"token written to {key_file} (mode 0600)" in out.stdout
    assert "agent" in cli(cluster, "keys", "whoami", token=token).stdout  # the written key works
    before = len(cli(cluster, "keys", "list").stdout.splitlines())
    again = cli(cluster, "keys", "create", "--role", "agent", "--output", str(key_file))
    assert again.returncode == 2 and f"--output {key_file} exists: give --force to replace it" in again.stderr
    assert key_file.read_text().strip() == token
    assert len(cli(cluster, "keys", "list").stdout.splitlines()) == before  # no key was made for nothing
    key_file.chmod(0o644)
    forced = cli(cluster, "keys", "create", "--role", "agent", "--output", str(key_file), "--force", "--token-only")
    assert forced.returncode == 0 and forced.stdout == "", forced.stderr
    assert key_file.read_text().strip() != token and key_file.stat().st_mode & 0o777 == 0o600


def _first_start(data_dir: Path, stdout: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
                            stdout=stdout, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def test_bootstrap_admin_key_is_printed_only_on_a_terminal(tmp_path: Path) -> None:
    for name, on_tty in (("log", False), ("tty", True)):
        data = tmp_path / name
        if on_tty:
            master, slave = pty.openpty()
            proc = _first_start(data, slave)
            os.close(slave)
        else:
            log = (tmp_path / "cp.log").open("wb")
            proc = _first_start(data, log.fileno())
        try:
            wait_until(lambda: (data / "endpoint").exists(), timeout=30, what="the endpoint file")  # noqa: B023
            token = (data / "admin.key").read_text().strip()
            if on_tty:
                shown = bytearray()

                def read_some() -> bool:
                    if select.select([master], [], [], 0.1)[0]:
                        shown.extend(os.read(master, 4096))
                    return token.encode() in shown

                wait_until(read_some, timeout=30, interval=0, what="the admin key on the terminal")
            else:
                log.flush()
                text = (tmp_path / "cp.log").read_text()
                assert str(data / "admin.key") in text and "not printed because stdout is not a terminal" in text
                assert token not in text
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if on_tty:
                os.close(master)
            else:
                log.close()


@pytest.mark.parametrize("variable", ["LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONSTARTUP", "DYLD_INSERT_LIBRARIES",
                                      "GCONV_PATH"])
def test_a_deployer_cannot_set_code_loading_env(cluster: Cluster, tmp_path: Path, variable: str) -> None:
    if "envmodel" not in cli(cluster, "models", "list").stdout:
        assert cli(cluster, "models", "upload", str(onnx_add(tmp_path / "add.onnx")), "--model-id", "envmodel").returncode == 0
    deployer = cluster.create_key("deployer", user="dora").token
    out = cli(cluster, "deployments", "start", "envmodel", "--deployment-id", "env-d", "--env", f"{variable}=/tmp/x",
              "--dry-run", token=deployer)
    assert out.returncode == 1
    assert (f"error: INVALID_ARGUMENT: variants[0].env {variable} changes how worker processes load code; "
            "only an admin may set it") in out.stderr
    # past the env check, this control plane (no agents) has nowhere to place it
    ok = cli(cluster, "deployments", "start", "envmodel", "--deployment-id", "env-d", "--env", "OMP_NUM_THREADS=1",
             "--dry-run", token=deployer)
    assert "RESOURCE_EXHAUSTED" in ok.stderr and "no nodes have joined" in ok.stderr, ok.stderr
    admin = cli(cluster, "deployments", "start", "envmodel", "--deployment-id", "env-d", "--env", f"{variable}=/tmp/x",
                "--dry-run")
    assert "RESOURCE_EXHAUSTED" in admin.stderr and "no nodes have joined" in admin.stderr, admin.stderr
