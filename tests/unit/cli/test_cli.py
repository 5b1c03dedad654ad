"""Tests of the `modelfleet` CLI that need no real control plane.

Pure parts (durations, tensor specs, `--input`, rendering, the demo model)
are tested directly. Client behaviour (chunked upload, metadata, infer with
ModelMetadata, watch --until, the one-line errors) runs against small fake
gRPC servicers on a real socket bound to 127.0.0.1:0. `modelfleet up`'s
process handling runs against stand-in child scripts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from modelfleet import demo
from modelfleet.cli import cmd_deployments, render, tensors
from modelfleet.cli.client import Client
from modelfleet.cli.main import build_parser, main
from modelfleet.cli.parsing import model_format, parse_bytes, parse_duration, parse_tensor_spec
from modelfleet.cli.supervisor import ChildDied
from modelfleet.cli.up import LocalFleet, client_address, parse_endpoint
from modelfleet.inference import grpc_service_pb2, grpc_service_pb2_grpc
from modelfleet.v1 import common_pb2, deployments_pb2, deployments_pb2_grpc, models_pb2, models_pb2_grpc

# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m", 60.0), ("30s", 30.0), ("500ms", 0.5), ("2h", 7200.0), ("20", 20.0), ("1.5", 1.5), ("1m30s", 90.0),
     ("0", 0.0), (" 45s ", 45.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1x", "-5", "m", "10 s", "1m-3s", "nan", "inf"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_bytes_and_tensor_specs() -> None:
    assert parse_bytes("1024") == 1024
    assert parse_bytes("512Mi") == 512 * 1024**2
    assert parse_bytes("2GiB") == 2 * 1024**3
    assert parse_bytes("1.5G") == 1_500_000_000
    spec = parse_tensor_spec("x:fp32:-1,4")
    assert (spec.name, spec.datatype, list(spec.shape)) == ("x", "FP32", [-1, 4])
    assert list(parse_tensor_spec("y:INT64:[2, 3]").shape) == [2, 3]
    assert list(parse_tensor_spec("s:FP32:").shape) == []
    for bad in ("x", "x:FP32", "x:FP32:a,b", "x:FP32:-2"):
        with pytest.raises(ValueError):
            parse_tensor_spec(bad)


def test_model_format_from_extension() -> None:
    assert model_format(Path("m.onnx"), None) == common_pb2.MODEL_FORMAT_ONNX
    for name in ("m.pt", "m.pth", "m.torchscript"):
        assert model_format(Path(name), None) == common_pb2.MODEL_FORMAT_TORCHSCRIPT
    assert model_format(Path("m.bin"), "onnx") == common_pb2.MODEL_FORMAT_ONNX
    with pytest.raises(ValueError, match="--format"):
        model_format(Path("m.bin"), None)


def test_global_flags_before_or_after_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFLEET_ADDR", raising=False)
    args = build_parser().parse_args(["models", "list"])
    assert (args.addr, args.json) == ("127.0.0.1:7070", False)
    args = build_parser().parse_args(["--json", "--addr", "h:1", "nodes", "list"])
    assert (args.addr, args.json) == ("h:1", True)
    args = build_parser().parse_args(["deployments", "get", "d", "--json", "--addr", "h:2"])
    assert (args.addr, args.json, args.deployment_id) == ("h:2", True, "d")
    monkeypatch.setenv("MODELFLEET_ADDR", "env:9")
    assert build_parser().parse_args(["nodes", "list"]).addr == "env:9"


def test_start_arguments_build_the_request() -> None:
    args = build_parser().parse_args([
        "deployments", "start", "resnet", "--deployment-id", "r1", "--model-version", "2", "--inference-threads", "2",
        "--model-threads", "3", "--queue-capacity", "10", "--wait-for", "fully_allocated", "--timeout", "1m",
        "--instances", "2", "--description", "d", "--request-id", "req", "--env", "A=1=2", "--pool", "gpu",
    ])
    req, given = cmd_deployments.build_spec(args)
    assert (req.model_version, req.inference_threads, req.model_threads, req.queue_capacity, req.instances) == (
        2, 2, 3, 10, 2)
    assert dict(req.env) == {"A": "1=2"} and req.resources.pool == "gpu"
    assert "resources" in given and "description" in given
    assert args.timeout == 60.0 and cmd_deployments.WAIT_FOR[args.wait_for] == deployments_pb2.WAIT_FOR_FULLY_ALLOCATED
    with pytest.raises(SystemExit):
        build_parser().parse_args(["deployments", "start", "m", "--timeout", "soon"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["deployments", "start", "m", "--wait-for", "ready"])


# ---------------------------------------------------------------- rendering


def _start_response() -> deployments_pb2.StartDeploymentResponse:
    resp = deployments_pb2.StartDeploymentResponse()
    a = resp.allocation
    a.task_parameters.model_id = "demo"
    a.task_parameters.model_version = 1
    a.task_parameters.model_bytes = 265632637
    a.task_parameters.inference_threads = 1
    a.task_parameters.model_threads = 1
    a.task_parameters.queue_capacity = 1024
    a.routing_table["node-b"].routing_state = common_pb2.ROUTING_STATE_FAILED
    a.routing_table["node-b"].reason = "load error: bad model"
    a.routing_table["node-a"].routing_state = common_pb2.ROUTING_STATE_STARTED
    a.allocation_state = common_pb2.ALLOCATION_STATE_STARTED
    a.start_time.FromJsonString("2022-11-02T11:50:34.766591Z")
    a.target_nodes = 2
    a.not_chosen["node-c"] = "cordoned"
    resp.deployment.deployment_id = "demo"
    resp.deployment.allocations.add().CopyFrom(a)
    return resp


def test_seed_shape_of_start_response() -> None:
    seed = render.start_response_seed(_start_response())
    assert seed == {
        "allocation": {
            "task_parameters": {"model_id": "demo", "model_version": 1, "model_bytes": 265632637,
                                "inference_threads": 1, "model_threads": 1, "queue_capacity": 1024},
            "routing_table": {"node-a": {"routing_state": "started", "reason": ""},
                              "node-b": {"routing_state": "failed", "reason": "load error: bad model"}},
            "allocation_state": "started",
            "start_time": "2022-11-02T11:50:34.766591Z",
        },
        "not_chosen": {"node-c": "cordoned"},
    }
    assert render.enum_name(common_pb2.AllocationState, common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED) == "fully_allocated"
    assert render.enum_name(common_pb2.DeploymentStatus, 99) == "99"
    line = cmd_deployments.snapshot_line(_start_response().deployment)
    assert "started 1/2 [node-a=started node-b=failed(load error: bad model)]" in line
    assert cmd_deployments.reached(_start_response().deployment, "started")
    assert not cmd_deployments.reached(_start_response().deployment, "fully_allocated")


# ---------------------------------------------------------------- tensors


def test_input_from_npy_file_and_json_literal(tmp_path: Path) -> None:
    np.save(tmp_path / "batch.npy", np.arange(8, dtype=np.float64).reshape(2, 4))
    name, value = tensors.parse_input_arg(f"x=@{tmp_path / 'batch.npy'}")
    arr = tensors.to_array(value, "FP32")
    assert name == "x" and arr.dtype == np.float32 and arr.shape == (2, 4)
    name, value = tensors.parse_input_arg("ids=[[1,2,3,4]]")
    assert name == "ids" and tensors.to_array(value, "INT64").dtype == np.int64
    assert tensors.to_array([[1.5, 2]], None).dtype == np.float32
    assert tensors.to_array([1, 2], None).dtype == np.int64
    assert tensors.to_array(["a", "b"], None).dtype == object
    for bad in ("x", "x=", "=1", "x=[1,", "x=@/nonexistent.npy"):
        with pytest.raises(ValueError):
            tensors.parse_input_arg(bad)
    with pytest.raises(ValueError, match="datatype"):
        tensors.to_array([1], "FLOAT")


def test_encode_decode_round_trip() -> None:
    resp = grpc_service_pb2.ModelInferResponse()
    for arr in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([True, False]),
                np.array(["hé", "x"], dtype=object)):
        datatype, raw = tensors.encode(arr)
        resp.outputs.add(name=f"o{len(resp.outputs)}", datatype=datatype, shape=list(arr.shape))
        resp.raw_output_contents.append(raw)
    assert tensors.decode_output(resp, 0).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert tensors.decode_output(resp, 1).tolist() == [True, False]
    assert tensors.to_list(tensors.decode_output(resp, 2)) == ["hé", "x"]
    typed = grpc_service_pb2.ModelInferResponse()
    out = typed.outputs.add(name="y", datatype="FP32", shape=[1, 2])
    out.contents.fp32_contents.extend([0.1, 2.5])
    assert tensors.to_list(tensors.decode_output(typed, 0)) == [[0.1, 2.5]]


# ---------------------------------------------------------------- demo model


def test_demo_model_matches_numpy_in_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = demo.build_demo_model(tmp_path / "sub" / "demo.onnx")
    again = demo.build_demo_model(tmp_path / "again.onnx")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(again.read_bytes()).digest()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("x", "tensor(float)")]
    for x in (demo.DEMO_INPUT, np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)):
        (y,) = session.run(["y"], {"x": x})
        np.testing.assert_allclose(y, demo.expected_output(x), rtol=1e-6, atol=1e-6)
    assert (demo.expected_output(demo.DEMO_INPUT) == 0).any()  # the ReLU clips something


# ---------------------------------------------------------------- errors


def _refusing_port() -> Iterator[int]:
    """A port that is bound but not listening: connecting to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


refusing_port = pytest.fixture(_refusing_port)


def test_unavailable_is_one_line_naming_the_address(refusing_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    addr = f"127.0.0.1:{refusing_port}"
    assert main(["--addr", addr, "models", "list"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: UNAVAILABLE: ") and addr in lines[0]


def test_unavailable_in_a_subprocess_has_no_traceback(refusing_port: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "modelfleet.cli", "deployments", "list"], capture_output=True,
                          text=True, timeout=60, env={"MODELFLEET_ADDR": f"127.0.0.1:{refusing_port}",
                                                      "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: UNAVAILABLE: ")
    assert "Traceback" not in proc.stderr


def test_keyboard_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(self: Client) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "nodes", property(interrupted))
    assert main(["nodes", "list"]) == 130
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- fake servers


class FakeRegistry(models_pb2_grpc.ModelRegistryServicer):
    def __init__(self) -> None:
        self.metadata: models_pb2.UploadModelMetadata | None = None
        self.chunk_sizes: list[int] = []
        self.auth: str | None = None

    def UploadModel(self, request_iterator: Iterator[models_pb2.UploadModelRequest],
                    context: grpc.ServicerContext) -> models_pb2.Model:
        self.auth = dict(context.invocation_metadata()).get("authorization")
        data = bytearray()
        for req in request_iterator:
            if req.HasField("metadata"):
                self.metadata = req.metadata
            else:
                self.chunk_sizes.append(len(req.chunk))
                data += req.chunk
        assert self.metadata is not None
        return models_pb2.Model(model_id=self.metadata.model_id, version=3, format=self.metadata.format,
                                model_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                state=common_pb2.MODEL_STATE_NORMAL)

    def GetModel(self, request: models_pb2.GetModelRequest, context: grpc.ServicerContext) -> models_pb2.Model:
        context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_id!r} not found")


class FakeDeployments(deployments_pb2_grpc.DeploymentsServicer):
    def StartDeployment(self, request: deployments_pb2.StartDeploymentRequest,
                        context: grpc.ServicerContext) -> deployments_pb2.StartDeploymentResponse:
        assert request.wait_for == deployments_pb2.WAIT_FOR_STARTED and request.timeout.seconds == 30
        return _start_response()

    def WatchDeployment(self, request: deployments_pb2.WatchDeploymentRequest,
                        context: grpc.ServicerContext) -> Iterator[deployments_pb2.WatchDeploymentResponse]:
        if request.deployment_id == "slow":  # one snapshot, then nothing until the client gives up
            yield deployments_pb2.WatchDeploymentResponse(deployment=deployments_pb2.Deployment(deployment_id="slow"))
            while context.is_active():
                time.sleep(0.02)
            return
        for state in (common_pb2.ALLOCATION_STATE_STARTING, common_pb2.ALLOCATION_STATE_STARTED,
                      common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED, common_pb2.ALLOCATION_STATE_STOPPING):
            snap = deployments_pb2.WatchDeploymentResponse()
            snap.deployment.deployment_id = request.deployment_id
            snap.deployment.allocations.add(allocation_state=state)
            yield snap


class FakeInference(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.metadata_calls = 0

    def ModelMetadata(self, request: grpc_service_pb2.ModelMetadataRequest,
                      context: grpc.ServicerContext) -> grpc_service_pb2.ModelMetadataResponse:
        self.metadata_calls += 1
        resp = grpc_service_pb2.ModelMetadataResponse(name=request.name)
        resp.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
        return resp

    def ModelInfer(self, request: grpc_service_pb2.ModelInferRequest,
                   context: grpc.ServicerContext) -> grpc_service_pb2.ModelInferResponse:
        (inp,) = request.inputs
        if inp.datatype != "FP32":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input x: expected FP32, got {inp.datatype}")
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tuple(inp.shape))
        y = demo.expected_output(x)
        resp = grpc_service_pb2.ModelInferResponse(model_name=request.model_name)
        resp.outputs.add(name="y", datatype="FP32", shape=list(y.shape))
        resp.raw_output_contents.append(y.tobytes())
        return resp


@pytest.fixture
def fake_server() -> Iterator[tuple[str, FakeRegistry, FakeInference]]:
    registry, inference = FakeRegistry(), FakeInference()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    models_pb2_grpc.add_ModelRegistryServicer_to_server(registry, server)
    deployments_pb2_grpc.add_DeploymentsServicer_to_server(FakeDeployments(), server)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", registry, inference
    finally:
        server.stop(None)


def test_upload_streams_chunks_with_metadata_and_token(fake_server: tuple[str, FakeRegistry, FakeInference],
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    addr, registry, _ = fake_server
    blob = bytes(range(256)) * (10 * 1024)  # 2.5 MiB: three chunks
    (tmp_path / "m.pt").write_bytes(blob)
    monkeypatch.setenv("MODELFLEET_TOKEN", "s3cret")
    assert main(["--addr", addr, "models", "upload", str(tmp_path / "m.pt"), "--model-id", "m",
                 "--input", "x:FP32:-1,4", "--description", "d"]) == 0
    out, err = capsys.readouterr()
    meta = registry.metadata
    assert meta is not None and meta.model_id == "m" and meta.format == common_pb2.MODEL_FORMAT_TORCHSCRIPT
    assert meta.sha256 == hashlib.sha256(blob).hexdigest() and meta.total_bytes == len(blob)
    assert [s.name for s in meta.inputs] == ["x"] and meta.description == "d"
    assert registry.chunk_sizes == [1024 * 1024, 1024 * 1024, len(blob) - 2 * 1024 * 1024]
    assert registry.auth == "Bearer s3cret"
    assert "state:       NORMAL" in out and f"sha256:      {meta.sha256}" in out
    assert "100%" in err  # plain progress lines: stderr is not a TTY here

    assert main(["--addr", addr, "--json", "models", "upload", str(tmp_path / "m.pt"), "--model-id", "m",
                 "--input", "x:FP32:-1"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["model_bytes"] == str(len(blob)) and err == ""

    assert main(["--addr", addr, "models", "get", "nope"]) == 1
    assert capsys.readouterr().err == "error: NOT_FOUND: model 'nope' not found\n"


def test_infer_learns_dtype_from_metadata(fake_server: tuple[str, FakeRegistry, FakeInference],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    addr, _, inference = fake_server
    assert main(["--addr", addr, "infer", "demo", "--input", "x=[[1,2,3,4],[2,0,1,-1]]"]) == 0
    out = capsys.readouterr().out
    assert inference.metadata_calls == 1
    assert out.startswith("y FP32 [2, 3] = ")
    np.testing.assert_allclose(json.loads(out.split(" = ", 1)[1]), demo.expected_output(demo.DEMO_INPUT), rtol=1e-6)

    assert main(["--addr", addr, "--json", "infer", "demo", "--input", "x=[[1,2,3,4]]", "--dtype", "FP32"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert inference.metadata_calls == 1  # --dtype given: no ModelMetadata call
    assert data["outputs"][0]["shape"] == [1, 3] and "raw_output_contents" not in data
    np.testing.assert_allclose(data["outputs"][0]["data"], demo.expected_output([[1, 2, 3, 4]]), rtol=1e-6)

    assert main(["--addr", addr, "infer", "demo", "--input", "x=[[1,2,3,4]]", "--dtype", "INT64"]) == 1
    assert capsys.readouterr().err == "error: INVALID_ARGUMENT: input x: expected FP32, got INT64\n"
    assert main(["--addr", addr, "infer", "demo", "--input", "z=[1]"]) == 2
    assert "has no input 'z' (inputs: x)" in capsys.readouterr().err


def test_start_prints_seed_shape_and_watch_until(fake_server: tuple[str, FakeRegistry, FakeInference],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    addr = fake_server[0]
    assert main(["--addr", addr, "deployments", "start", "demo", "--wait-for", "started", "--timeout", "30s"]) == 0
    assert json.loads(capsys.readouterr().out) == render.start_response_seed(_start_response())
    assert main(["--addr", addr, "deployments", "watch", "demo", "--until", "fully_allocated"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "fully_allocated" in lines[-1]
    assert main(["--addr", addr, "deployments", "watch", "demo", "--until", "stopped"]) == 1
    assert "ended before deployment demo reached stopped" in capsys.readouterr().err
    assert main(["--addr", addr, "deployments", "watch", "slow", "--until", "started", "--timeout", "300ms"]) == 1
    assert capsys.readouterr().err == "error: deployment slow did not reach started within --timeout 0.3s\n"
    assert main(["--addr", addr, "deployments", "watch", "slow", "--timeout", "300ms"]) == 0


# ---------------------------------------------------------------- up


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def test_up_reports_a_child_dying_early(tmp_path: Path) -> None:
    fleet = LocalFleet(tmp_path, listen="127.0.0.1:0", agents=1, start_timeout=30, shutdown_timeout=5)
    with pytest.raises(ChildDied) as info:
        fleet.start(cp_argv=_script("""
            import sys
            print("cannot bind 127.0.0.1:0: boom", file=sys.stderr)
            sys.exit(3)
        """))
    fleet.shutdown()
    assert "exit code 3" in str(info.value)
    assert info.value.child.tail() == ["cannot bind 127.0.0.1:0: boom"]
    assert (tmp_path / "logs" / "control-plane.log").exists()


def test_up_reads_the_endpoint_file_and_stops_agents_first(tmp_path: Path) -> None:
    (tmp_path / "control-plane").mkdir()
    (tmp_path / "control-plane" / "endpoint").write_text("127.0.0.1:1\n")  # stale: must be ignored
    minted: list[str] = []
    fleet = LocalFleet(tmp_path, listen="127.0.0.1:0", agents=2, start_timeout=30, shutdown_timeout=10,
                       mint=lambda addr, admin, name: minted.append(f"{addr} {admin} {name}") or f"token-{name}")
    cp = _script("""
        import os, signal, sys, time
        d = sys.argv[sys.argv.index("--data-dir") + 1]
        def term(*_):
            with open(os.path.join(d, "..", "order"), "a") as f: f.write("control-plane\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, term)
        time.sleep(0.3)
        with open(os.path.join(d, "admin.key"), "w") as f:
            f.write("admin-token\\n")
        with open(os.path.join(d, "endpoint.tmp"), "w") as f:
            f.write("0.0.0.0:45678\\n")
        os.replace(os.path.join(d, "endpoint.tmp"), os.path.join(d, "endpoint"))
        while True: time.sleep(1)
    """)
    agent = _script("""
        import os, signal, sys, time
        d = sys.argv[sys.argv.index("--data-dir") + 1]
        def term(*_):
            time.sleep(0.2)
            with open(os.path.join(d, "..", "order"), "a") as f: f.write("agent\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, term)
        print("agent", sys.argv[1:], flush=True)
        while True: time.sleep(1)
    """)
    try:
        fleet.start(cp_argv=cp, agent_argv=agent)
        assert fleet.addr == "127.0.0.1:45678"
        assert [c.name for c in fleet.agents] == ["node-1", "node-2"]
        deadline = time.monotonic() + 30  # let the agents install their SIGTERM handler
        while not all(c.tail() for c in fleet.agents) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        fleet.shutdown()
    assert not any(c.running for c in fleet.children)
    assert fleet.control_plane is not None and fleet.control_plane.poll() == 0
    assert all(a.poll() == 0 for a in fleet.agents)
    assert (tmp_path / "order").read_text().split() == ["agent", "agent", "control-plane"]
    assert "--control-plane" in (tmp_path / "logs" / "node-2.log").read_text()
    # each agent got its own key (minted with the admin key), kept 0600 beside the control plane's data
    assert minted == ["127.0.0.1:45678 admin-token node-1", "127.0.0.1:45678 admin-token node-2"]
    key = tmp_path / "control-plane" / "agent-keys" / "node-2.key"
    assert key.read_text() == "token-node-2\n" and key.stat().st_mode & 0o777 == 0o600
    assert f"--token-file', '{key}'" in (tmp_path / "logs" / "node-2.log").read_text()


def test_endpoint_parsing() -> None:
    assert parse_endpoint("127.0.0.1:7070\n") == "127.0.0.1:7070"
    assert client_address("[::]:9") == "127.0.0.1:9" and client_address("[::1]:9") == "[::1]:9"
    for bad in ("", "127.0.0.1", "h:0", "h:x"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_up_arguments() -> None:
    args = build_parser().parse_args(["up", "--listen", "127.0.0.1:0", "--agents", "2", "--no-demo"])
    assert isinstance(args, argparse.Namespace)
    assert (args.listen, args.agents, args.no_demo, args.data_dir) == ("127.0.0.1:0", 2, True, Path(".modelfleet"))


def test_cli_imports_neither_server_package() -> None:
    code = ("import sys, modelfleet.cli.main, modelfleet.cli.up; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('control_plane', 'node_agent')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_progress_bar_on_a_tty_and_lines_otherwise() -> None:
    import io

    from modelfleet.cli.cmd_models import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, plain = Tty(), io.StringIO()
    for stream in (tty, plain):
        bar = Progress("m.onnx", 4 * 1024 * 1024, stream=stream)
        for _ in range(4):
            bar.update(1024 * 1024)
        bar.finish()
    assert tty.getvalue().count("\r") == 4 and "[" + "#" * 30 + "] 100%" in tty.getvalue()
    mib = 1024 * 1024
    assert plain.getvalue().splitlines() == [
        f"uploading m.onnx: {pct}% ({pct // 25 * mib}/{4 * mib} bytes)" for pct in (25, 50, 75, 100)
    ]
