"""What a user does from the README, end to end: `modelfleet up` on a fresh
data dir, then the CLI against it (upload, start, stats, infer, stop),
gRPC health and server reflection on the control plane and on a worker, and
a clean Ctrl-C. Real processes only; the port is 0 and read back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cluster import ROOT, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from modelbuild import onnx_add
from test_integration import worker_pids

from modelfleet.demo import DEMO_INPUT, expected_output


class Up:
    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.out = tmp / "up.out"
        self._out = open(self.out, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet.cli", "up", "--listen", "127.0.0.1:0", "--data-dir", str(self.data)],
            stdout=self._out, stderr=subprocess.STDOUT, cwd=tmp, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_until(self._ready, timeout=120, what="`modelfleet up` to serve")
        self.addr = (self.data / "control-plane" / "endpoint").read_text().strip()

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"modelfleet up exited {self.proc.returncode}:\n{self.text()}")
        return "press Ctrl-C to stop" in self.text()

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "modelfleet.cli", *args], capture_output=True, text=True, timeout=120,
            cwd=ROOT, env={**os.environ, "MODELFLEET_ADDR": self.addr,
                           "MODELFLEET_TOKEN_FILE": str(self.data / "control-plane" / "admin.key")},
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        finally:
            self._out.close()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    instance = Up(tmp_path_factory.mktemp("up"))
    try:
        yield instance
    finally:
        if instance.proc.poll() is None:
            instance.stop()


def test_up_serves_the_demo_and_prints_allocation_and_answer(up: Up) -> None:
    text = up.text()
    assert '"allocation_state": "fully_allocated"' in text
    assert '"routing_state": "started"' in text
    assert "ok: equals relu(x @ W + b) computed with numpy" in text
    out = json.loads(up.cli("--json", "infer", "demo", "--input", f"x={json.dumps(DEMO_INPUT.tolist())}").stdout)
    (y,) = out["outputs"]
    np.testing.assert_allclose(np.array(y["data"], np.float32), expected_output(DEMO_INPUT), rtol=1e-6)


def test_cli_upload_start_stats_infer_stop(up: Up, tmp_path: Path) -> None:
    model = onnx_add(tmp_path / "add.onnx")
    uploaded = up.cli("models", "upload", str(model), "--model-id", "my-model")
    assert "NORMAL" in uploaded.stdout and str(model.stat().st_size) in uploaded.stdout
    # `up`'s agent offers this machine's CPUs; the demo holds one of them
    too_big = up.cli("deployments", "start", "my-model", "--inference-threads", "64", check=False)
    assert too_big.returncode == 1 and too_big.stderr.startswith("error: RESOURCE_EXHAUSTED") and "cpus" in too_big.stderr
    started = up.cli(
        "deployments", "start", "my-model", "--inference-threads", "1", "--model-threads", "1",
        "--queue-capacity", "64", "--wait-for", "fully_allocated", "--timeout", "1m",
    )
    allocation = json.loads(started.stdout)["allocation"]
    assert allocation["allocation_state"] == "fully_allocated"
    assert allocation["task_parameters"]["model_id"] == "my-model"
    assert allocation["task_parameters"]["queue_capacity"] == 64
    assert [e["routing_state"] for e in allocation["routing_table"].values()] == ["started"]

    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    out = json.loads(up.cli("--json", "infer", "my-model", "--input", f"x=@{tmp_path / 'x.npy'}").stdout)
    assert out["outputs"][0]["data"] == [[2.0, 3.0, 4.0, 5.0]] * 2
    stats = up.cli("deployments", "stats", "my-model")
    assert "started" in stats.stdout and "INFERENCE_COUNT" in stats.stdout

    bad = up.cli("infer", "my-model", "--input", "x=[1,2]", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: INVALID_ARGUMENT") and "Traceback" not in bad.stderr
    assert len(worker_pids("my-model", up.data)) == 1
    up.cli("deployments", "stop", "my-model", "--wait", "--timeout", "30s")
    wait_until(lambda: not worker_pids("my-model", up.data), timeout=30, what="the worker to exit after stop")
    listed = up.cli("deployments", "list").stdout
    assert "my-model" in listed and "stopped" in listed


def _services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())


def _healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_and_reflection_on_control_plane_and_worker(up: Up) -> None:
    assert _healthy(up.addr)
    services = _services(up.addr)
    assert {
        "modelfleet.v1.ModelRegistry", "modelfleet.v1.Deployments", "modelfleet.v1.Nodes",
        "modelfleet.v1.AgentControl", "inference.GRPCInferenceService", "grpc.health.v1.Health",
    } <= services
    deployment = json.loads(up.cli("--json", "deployments", "get", "demo").stdout)
    (entry,) = deployment["allocations"][0]["routing_table"].values()
    assert _healthy(entry["worker_address"])
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= _services(entry["worker_address"])


def _readme_block(after: str, lang: str) -> str:
    """The first ```LANG block of the README after the line `after`."""
    text = (ROOT / "README.md").read_text()
    rest = text[text.index(after):]
    start = rest.index(f"```{lang}\n") + len(lang) + 4
    return rest[start:rest.index("```", start)]


def test_the_readmes_seed_start_call_works_as_written(up: Up) -> None:
    assert re.search(r"^REST: http://127\.0\.0\.1:\d+$", up.text(), re.M), up.text()
    script = _readme_block("### The Elasticsearch API shape", "sh").replace(".modelfleet/", f"{up.data}/")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    stopped, started = done.stdout.split("\n", 1)
    assert json.loads(stopped) == {"stopped": True}
    answer = json.loads(started)
    shown = json.loads(_readme_block("### The Elasticsearch API shape", "json"))

    def shape(value: Any) -> Any:  # keys and value types; node ids and times differ run to run
        if isinstance(value, dict):
            return {"NODE" if k.startswith("node-") else k: shape(v) for k, v in value.items()}
        return type(value).__name__

    assert shape(answer) == shape(shown)
    alloc = answer["allocation"]
    assert alloc["task_parameters"]["model_id"] == "demo" and alloc["allocation_state"] == shown["allocation"]["allocation_state"]
    assert [e["routing_state"] for e in alloc["routing_table"].values()] == ["started"]


def test_ctrl_c_stops_everything_cleanly(up: Up) -> None:
    assert worker_pids("demo", up.data)
    assert up.stop() == 0
    assert "stopped" in up.text().splitlines()[-1]
    assert not worker_pids("demo", up.data)
