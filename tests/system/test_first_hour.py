"""First-hour edges of issue 13 through a real control plane and the real CLI
in a child process: uploads (a bad id refused at once, the same bytes answer
with the existing version), TorchScript without input specs, code-loading
variables in a deployment's env."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster
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
