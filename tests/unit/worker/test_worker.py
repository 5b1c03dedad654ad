"""The inference worker as a real process, called with our own gRPC stubs.

A module fixture starts the long-lived workers at once (add, mlp, gather,
strings, torchscript, slow); tests that end a worker start their own. Every
worker binds port 0 and is found through its ready file (tests/workerproc.py).
Counters are compared as deltas, so tests sharing a worker stay independent.
The last section unit-tests the codec, the queue and the stats in process.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import modelbuild as mb
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from workerproc import WorkerProcess, spawn_worker, start_worker

from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.inference import grpc_service_pb2_grpc as pb_grpc
from modelfleet.v1 import worker_pb2, worker_pb2_grpc
from node_agent.runtime.base import TensorSpec
from node_agent.worker.codec import decode_infer_request, deserialize_bytes, serialize_bytes
from node_agent.worker.errors import DeadlineExceeded, InvalidArgument, QueueFull, Unavailable
from node_agent.worker.stats import Stats
from node_agent.worker.workqueue import WorkQueue

NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
V2 = {np.dtype(v): k for k, v in NUMPY.items()}


# ---- fixtures and helpers -----------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "add": mb.onnx_add(d / "add.onnx"),
        "mlp": mb.onnx_mlp(d / "mlp.onnx", sizes=(16, 32, 8)),
        "gather": mb.onnx_gather(d / "gather.onnx"),
        "strings": mb.onnx_string_identity(d / "strings.onnx"),
        "slow": mb.onnx_slow(d / "slow.onnx"),
        "warmup_fails": mb.onnx_warmup_fails(d / "warmup_fails.onnx"),
        "ts_add": mb.torchscript_add(d / "add.pt"),
        "corrupt": mb.corrupt_file(d / "corrupt.onnx"),
    }


class Client:
    """Stubs on one channel to one worker."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.channel = grpc.insecure_channel(worker.address)
        self.infer = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.control = worker_pb2_grpc.WorkerControlStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def stats(self) -> worker_pb2.GetWorkerStatsResponse:
        return self.control.GetWorkerStats(worker_pb2.GetWorkerStatsRequest(), timeout=10)

    def wait_stats(self, predicate: Callable[[Any], bool], timeout: float = 15.0) -> Any:
        """Poll GetWorkerStats until `predicate(stats)` holds (deadline-bound)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats().stats
            if predicate(stats):
                return stats
            assert time.monotonic() < deadline, f"condition never held; last stats: {stats}"
            time.sleep(0.01)


@pytest.fixture(scope="module")
def clients(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Client]]:
    workdir = tmp_path_factory.mktemp("workers")
    specs: dict[str, dict[str, Any]] = {
        "add": {"model": models["add"], "fmt": "onnx", "model_threads": 2},
        "mlp": {"model": models["mlp"], "fmt": "onnx"},
        "gather": {"model": models["gather"], "fmt": "onnx"},
        "strings": {"model": models["strings"], "fmt": "onnx", "extra_args": ["--max-message-bytes", "65536"]},
        "slow": {"model": models["slow"], "fmt": "onnx", "model_threads": 1, "queue_capacity": 2},
        "ts": {"model": models["ts_add"], "fmt": "torchscript"},
    }
    workers = {name: spawn_worker(name=name, workdir=workdir, **spec) for name, spec in specs.items()}
    try:
        for worker in workers.values():
            worker.wait_ready(60)
        made = {name: Client(worker) for name, worker in workers.items()}
        yield made
        for client in made.values():
            client.channel.close()
    finally:
        for worker in workers.values():
            worker.close()


def request(model: str, arrays: dict[str, np.ndarray], *, outputs: tuple[str, ...] = (), version: str = "") -> pb.ModelInferRequest:
    """A raw_input_contents request (the fast path tritonclient uses)."""
    req = pb.ModelInferRequest(model_name=model, model_version=version, id="req-1")
    for name, array in arrays.items():
        req.inputs.add(name=name, datatype=V2[array.dtype], shape=array.shape)
        req.raw_input_contents.append(array.tobytes())
    for name in outputs:
        req.outputs.add(name=name)
    return req


def decode(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        out.name: np.frombuffer(raw, dtype=NUMPY[out.datatype]).reshape(tuple(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def ort_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ---- serving ----------------------------------------------------------------------


def test_health_metadata_and_reflection(clients: dict[str, Client]) -> None:
    c = clients["add"]
    for service in ("", "inference.GRPCInferenceService", "modelfleet.v1.WorkerControl"):
        answer = c.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert c.infer.ServerLive(pb.ServerLiveRequest()).live
    assert c.infer.ServerReady(pb.ServerReadyRequest()).ready
    assert c.infer.ModelReady(pb.ModelReadyRequest(name="add", version="1")).ready
    meta = c.infer.ModelMetadata(pb.ModelMetadataRequest(name="add"))
    assert (meta.name, list(meta.versions), meta.platform) == ("add", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 4])]
    assert c.worker.ready == {"port": c.worker.port, "pid": c.worker.pid, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}  # fmt: skip
    index = c.infer.RepositoryIndex(pb.RepositoryIndexRequest())
    assert [(m.name, m.version, m.state) for m in index.models] == [("add", "1", "READY")]
    assert c.infer.ServerMetadata(pb.ServerMetadataRequest()).name == "modelfleet-worker"
    for bad in (lambda: c.infer.ModelMetadata(pb.ModelMetadataRequest(name="other")),
                lambda: c.infer.ModelReady(pb.ModelReadyRequest(name="add", version="2")),
                lambda: c.infer.ModelInfer(request("other", {"x": np.zeros((1, 4), np.float32)}))):  # fmt: skip
        assert rpc_error(bad).code() == grpc.StatusCode.NOT_FOUND
    reflect = reflection_pb2_grpc.ServerReflectionStub(c.channel)
    answers = list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "modelfleet.v1.WorkerControl", "grpc.health.v1.Health"} <= names


def test_onnx_results_equal_in_process_onnxruntime(clients: dict[str, Client], models: dict[str, Path]) -> None:
    rng = np.random.default_rng(5)
    for name, width in (("add", 4), ("mlp", 16)):
        x = rng.standard_normal((7, width)).astype(np.float32)
        expected = ort_session(models[name]).run(["y"], {"x": x})[0]
        response = clients[name].infer.ModelInfer(request(name, {"x": x}, version="1"), timeout=10)
        assert (response.model_name, response.model_version, response.id) == (name, "1", "req-1")
        np.testing.assert_array_equal(decode(response)["y"], expected)
    # typed contents are accepted too
    typed = pb.ModelInferRequest(model_name="add")
    typed.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([0, 1, 2, 3])
    np.testing.assert_array_equal(decode(clients["add"].infer.ModelInfer(typed))["y"], [[1, 3, 5, 7]])


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_results_equal_in_process_torch(clients: dict[str, Client], models: dict[str, Path]) -> None:
    import torch

    x = np.random.default_rng(6).standard_normal((3, 5)).astype(np.float32)
    module = torch.jit.load(str(models["ts_add"]))
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    response = clients["ts"].infer.ModelInfer(request("ts", {"x": x}), timeout=10)
    np.testing.assert_array_equal(decode(response)["OUTPUT__0"], expected)
    assert clients["ts"].infer.ModelMetadata(pb.ModelMetadataRequest(name="ts")).platform == "pytorch_libtorch"


def test_bytes_round_trip_and_oversized_message(clients: dict[str, Client]) -> None:
    c = clients["strings"]
    words = [b"hello", "wörld".encode(), b""]
    req = pb.ModelInferRequest(model_name="strings")
    req.inputs.add(name="x", datatype="BYTES", shape=[3])
    req.raw_input_contents.append(b"".join(struct.pack("<I", len(w)) + w for w in words))
    response = c.infer.ModelInfer(req, timeout=10)
    assert response.outputs[0].datatype == "BYTES" and list(response.outputs[0].shape) == [3]
    raw, got, offset = response.raw_output_contents[0], [], 0
    while offset < len(raw):
        (n,) = struct.unpack_from("<I", raw, offset)
        got.append(raw[offset + 4 : offset + 4 + n])
        offset += 4 + n
    assert got == words
    big = pb.ModelInferRequest(model_name="strings")  # the worker runs with --max-message-bytes 65536
    big.inputs.add(name="x", datatype="BYTES", shape=[1])
    big.raw_input_contents.append(struct.pack("<I", 100_000) + b"a" * 100_000)
    assert rpc_error(lambda: c.infer.ModelInfer(big, timeout=10)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert c.infer.ModelInfer(req, timeout=10).raw_output_contents == response.raw_output_contents


def _bad_requests() -> list[tuple[str, Callable[[], pb.ModelInferRequest], str]]:
    x = np.zeros((2, 4), np.float32)

    def raw(mutate: Callable[[pb.ModelInferRequest], object]) -> Callable[[], pb.ModelInferRequest]:
        def build() -> pb.ModelInferRequest:
            req = request("add", {"x": x})
            mutate(req)
            return req

        return build

    def set_raw(req: pb.ModelInferRequest, data: bytes) -> None:
        req.raw_input_contents[0] = data

    return [
        ("unknown input", raw(lambda r: setattr(r.inputs[0], "name", "z")), "unknown input 'z'"),
        ("missing input", lambda: pb.ModelInferRequest(model_name="add"), "missing input 'x'"),
        ("wrong datatype", raw(lambda r: setattr(r.inputs[0], "datatype", "INT64")),
         "input 'x': datatype mismatch, expected FP32, got INT64"),
        ("wrong rank", raw(lambda r: r.inputs[0].shape.append(1)), "input 'x': shape mismatch, expected [-1, 4]"),
        ("wrong dim", raw(lambda r: r.inputs[0].shape.__setitem__(1, 5)), "input 'x': shape mismatch"),
        ("negative dim", raw(lambda r: r.inputs[0].shape.__setitem__(0, -2)), "input 'x': negative dimension"),
        ("byte size", raw(lambda r: set_raw(r, bytes(40))), "input 'x': byte size mismatch, expected 32, got 40"),
        ("raw and typed", raw(lambda r: r.inputs[0].contents.fp32_contents.extend([0.0] * 8)),
         "input 'x': both raw_input_contents and typed contents are set"),
        ("raw count", raw(lambda r: r.raw_input_contents.append(b"")),
         "raw_input_contents has 2 entries, expected 1"),
        ("typed count", lambda: _typed_add([0.0] * 3), "input 'x': element count mismatch, expected 8, got 3"),
        ("unknown output", raw(lambda r: r.outputs.add(name="nope")), "unknown requested output 'nope'"),
        ("repeated input", raw(lambda r: (r.inputs.append(r.inputs[0]), r.raw_input_contents.append(bytes(32)))),
         "input 'x' appears more than once"),
    ]  # fmt: skip


def _typed_add(values: list[float]) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="add")
    req.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(values)
    return req


@pytest.mark.parametrize(("label", "build", "message"), _bad_requests(), ids=[case[0] for case in _bad_requests()])
def test_validation_rejects_bad_tensors_without_running_the_model(
    clients: dict[str, Client], label: str, build: Callable[[], pb.ModelInferRequest], message: str
) -> None:
    c = clients["add"]
    before = c.stats().stats
    err = rpc_error(lambda: c.infer.ModelInfer(build(), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert message in err.details()
    after = c.stats().stats
    assert (after.inference_count, after.error_count) == (before.inference_count, before.error_count)


def test_malformed_bytes_prefix_is_invalid(clients: dict[str, Client]) -> None:
    c = clients["strings"]
    for data, message in ((b"\x05\x00", "truncated length prefix"), (struct.pack("<I", 9) + b"abc", "declares 9 bytes")):
        req = pb.ModelInferRequest(model_name="strings")
        req.inputs.add(name="x", datatype="BYTES", shape=[1])
        req.raw_input_contents.append(data)
        err = rpc_error(lambda: c.infer.ModelInfer(req, timeout=10))  # noqa: B023 (called at once)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details()
        assert "input 'x'" in err.details()


def test_model_error_is_internal_and_counted(clients: dict[str, Client]) -> None:
    c = clients["gather"]
    before = c.stats().stats
    ok = c.infer.ModelInfer(request("gather", {"x": np.array([2, 0], np.int64)}), timeout=10)
    np.testing.assert_array_equal(decode(ok)["y"], [30.0, 10.0])
    err = rpc_error(lambda: c.infer.ModelInfer(request("gather", {"x": np.array([7], np.int64)}), timeout=10))
    assert err.code() == grpc.StatusCode.INTERNAL and err.details().startswith("model execution failed: ")
    after = c.stats().stats
    assert after.error_count == before.error_count + 1
    assert after.inference_count == before.inference_count + 1
    assert c.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_statistics(clients: dict[str, Client]) -> None:
    c = clients["mlp"]
    before = c.stats().stats
    for _ in range(3):
        c.infer.ModelInfer(request("mlp", {"x": np.ones((2, 16), np.float32)}), timeout=10)
    answer = c.stats()
    stats = answer.stats
    assert stats.inference_count == before.inference_count + 3
    assert stats.throughput_last_minute >= 3 and stats.peak_throughput_per_minute >= stats.throughput_last_minute
    assert stats.average_inference_time_ms > 0 and stats.number_of_pending_requests == 0
    assert stats.start_time.seconds > 0 and stats.last_access.seconds >= stats.start_time.seconds
    assert answer.rss_bytes > 10_000_000
    v2 = c.infer.ModelStatistics(pb.ModelStatisticsRequest(name="mlp")).model_stats[0]
    assert (v2.name, v2.version) == ("mlp", "1")
    assert v2.inference_count == v2.execution_count == stats.inference_count
    assert v2.inference_stats.success.count == stats.inference_count and v2.inference_stats.compute_infer.ns > 0
    assert v2.last_inference >= stats.start_time.seconds * 1000
    assert len(c.infer.ModelStatistics(pb.ModelStatisticsRequest()).model_stats) == 1


# ---- queue and deadlines (slow model: one model thread, capacity 2) ------------------------


def test_full_queue_rejects_the_excess_at_once(clients: dict[str, Client]) -> None:
    c = clients["slow"]
    before = c.stats().stats
    req = request("slow", {"x": np.ones(3, np.float32)})
    finished: dict[int, float] = {}
    futures = [c.infer.ModelInfer.future(req, timeout=60) for _ in range(6)]
    for i, future in enumerate(futures):
        future.add_done_callback(lambda _f, i=i: finished.setdefault(i, time.monotonic()))
    errors: dict[int, Any] = {}
    for i, future in enumerate(futures):
        try:
            future.result()
        except grpc.RpcError as exc:
            errors[i] = exc
    assert len(errors) == 3, errors
    for rejected in errors.values():
        assert rejected.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rejected.details() == "queue is full (capacity 2)"
        assert int(dict(rejected.trailing_metadata())["grpc-retry-pushback-ms"]) >= 1
    served = [i for i in range(6) if i not in errors]
    assert max(finished[i] for i in errors) < min(finished[i] for i in served)  # rejected before any finished
    after = c.stats().stats
    assert after.rejected_execution_count == before.rejected_execution_count + 3
    assert after.inference_count == before.inference_count + 3


def test_deadline_passed_while_queued_never_runs(clients: dict[str, Client]) -> None:
    c = clients["slow"]
    c.wait_stats(lambda s: s.number_of_pending_requests == 0)
    before = c.stats().stats
    req = request("slow", {"x": np.ones(3, np.float32)})
    first = c.infer.ModelInfer.future(req, timeout=60)
    c.wait_stats(lambda s: s.number_of_pending_requests == 1)  # the only model thread is busy
    err = rpc_error(lambda: c.infer.ModelInfer(req, timeout=0.1))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    c.wait_stats(lambda s: s.timeout_count == before.timeout_count + 1)
    first.result()
    after = c.wait_stats(lambda s: s.number_of_pending_requests == 0)
    assert after.inference_count == before.inference_count + 1  # the expired call never ran
    assert after.rejected_execution_count == before.rejected_execution_count


# ---- lifecycle: drain, load failures, arguments ------------------------------------------


def test_sigterm_drains_queued_calls_and_exits_0(models: dict[str, Path], tmp_path: Path) -> None:
    with start_worker(model=models["slow"], fmt="onnx", name="slow", workdir=tmp_path, queue_capacity=4,
                      drain_timeout=30) as worker:  # fmt: skip
        c = Client(worker)
        req = request("slow", {"x": np.ones(3, np.float32)})
        futures = [c.infer.ModelInfer.future(req, timeout=60) for _ in range(3)]
        c.wait_stats(lambda s: s.number_of_pending_requests == 3)
        worker.terminate()
        deadline = time.monotonic() + 10
        while c.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "health never left SERVING"
            time.sleep(0.01)
        err = rpc_error(lambda: c.infer.ModelInfer(req, timeout=10))
        assert err.code() == grpc.StatusCode.UNAVAILABLE and err.details() == "worker is draining"
        for future in futures:
            assert decode(future.result())["y"].shape == ()
        assert worker.wait_exit(30) == 0
        c.channel.close()


def test_drain_rpc_stops_admitting_without_exiting(models: dict[str, Path], tmp_path: Path) -> None:
    with start_worker(model=models["add"], fmt="onnx", name="add", workdir=tmp_path) as worker:
        c = Client(worker)
        drained = c.control.Drain(worker_pb2.DrainRequest(), timeout=10)
        assert (drained.completed, drained.abandoned) == (0, 0)
        err = rpc_error(lambda: c.infer.ModelInfer(request("add", {"x": np.zeros((1, 4), np.float32)}), timeout=10))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        status = c.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not c.infer.ServerReady(pb.ServerReadyRequest()).ready
        assert worker.proc.poll() is None
        c.channel.close()
        assert worker.close() == 0


@pytest.mark.parametrize(
    ("model", "fmt", "message"),
    [
        ("corrupt", "onnx", "load error: "),
        ("corrupt", "torchscript", "load error: "),
        ("warmup_fails", "onnx", "load error: warm-up inference failed: "),
    ],
)
def test_load_failure_exits_3_with_the_reason(models: dict[str, Path], tmp_path: Path, model: str, fmt: str, message: str) -> None:
    worker = spawn_worker(model=models[model], fmt=fmt, name="bad", workdir=tmp_path)
    assert worker.wait_exit(60) == 3
    assert worker.last_stderr_line().startswith(message), worker.stderr_text()
    assert not worker.ready_file.exists()


def test_bad_arguments_exit_2(models: dict[str, Path], tmp_path: Path) -> None:
    for extra in (["--queue-capacity", "0"], ["--model-threads", "x"], ["--inputs-json", "[{"]):
        worker = spawn_worker(model=models["add"], fmt="onnx", name="args", workdir=tmp_path, extra_args=extra)
        assert worker.wait_exit(30) == 2, worker.stderr_text()


# ---- in process: codec, queue, stats ---------------------------------------------------------


def test_codec_bytes_and_typed_contents() -> None:
    items = np.array([b"a", b"", "\u00e9".encode()], dtype=object)
    assert list(deserialize_bytes("t", serialize_bytes(items), 3)) == list(items)
    with pytest.raises(InvalidArgument, match="element count mismatch, expected 2, got more than 2"):
        deserialize_bytes("t", serialize_bytes(items), 2)
    spec = [TensorSpec(name="t", datatype="INT8", shape=(-1,))]
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="t", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 300])
    with pytest.raises(InvalidArgument, match="value 300 out of range for INT8"):
        decode_infer_request(typed, inputs=spec, outputs=[])
    typed.inputs[0].contents.int_contents[1] = -5
    assert decode_infer_request(typed, inputs=spec, outputs=[]).inputs["t"].tolist() == [1, -5]
    typed.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidArgument, match="contents.fp32_contents does not match datatype INT8"):
        decode_infer_request(typed, inputs=spec, outputs=[])
    half = pb.ModelInferRequest()
    half.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidArgument, match="FP16 data must be sent in raw_input_contents"):
        decode_infer_request(half, inputs=[TensorSpec(name="h", datatype="FP16", shape=(1,))], outputs=[])
    anything = [TensorSpec(name="a", datatype="FP32", shape=(), any_shape=True)]
    outs = [TensorSpec(name="o", datatype="FP32", shape=(), any_shape=True)]
    raw = request("m", {"a": np.ones((2, 3, 1), np.float32)})
    decoded = decode_infer_request(raw, inputs=anything, outputs=outs)
    assert decoded.inputs["a"].shape == (2, 3, 1) and not decoded.inputs["a"].flags.writeable  # a view, no copy
    assert decoded.outputs == ("o",) and decoded.id == "req-1"


def run_jobs(jobs: list[Callable[[], Any]]) -> list[Any]:
    """A WorkQueue run_batch whose items are plain callables (no key: each runs alone)."""
    outcomes: list[Any] = []
    for job in jobs:
        try:
            outcomes.append(job())
        except Exception as exc:  # handed back as the call's error
            outcomes.append(exc)
    return outcomes


def test_queue_bounds_expiry_cancel_and_abandon_in_process() -> None:
    async def scenario() -> None:
        stats = Stats()
        queue = WorkQueue(threads=1, capacity=1, stats=stats, loop=asyncio.get_running_loop(), run_batch=run_jobs)
        queue.start()
        ran: list[str] = []

        def blocked(gate: threading.Event, label: str) -> Callable[[], str]:
            def job() -> str:
                assert gate.wait(10)
                ran.append(label)
                return label

            return job

        # bounds: one running + one waiting; the third is refused at once
        gate = threading.Event()
        first = asyncio.ensure_future(queue.submit(blocked(gate, "first"), deadline=None))
        expired = asyncio.ensure_future(queue.submit(lambda: ran.append("expired"), deadline=time.monotonic() - 1))
        await asyncio.sleep(0)  # let both tasks reach the queue
        with pytest.raises(QueueFull, match=r"^queue is full \(capacity 1\)$"):
            await queue.submit(lambda: ran.append("third"), deadline=None)
        gate.set()
        assert await first == "first"
        with pytest.raises(DeadlineExceeded):
            await expired  # taken by the thread after its deadline: never run
        # a cancelled waiting call leaves the queue at once
        gate = threading.Event()
        first = asyncio.ensure_future(queue.submit(blocked(gate, "second"), deadline=None))
        waiting = asyncio.ensure_future(queue.submit(lambda: ran.append("cancelled"), deadline=None))
        await asyncio.sleep(0)
        assert queue.pending == 2
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert queue.pending == 1
        gate.set()
        assert await first == "second"
        # drain: stop admitting, give up on what still waits
        gate = threading.Event()
        first = asyncio.ensure_future(queue.submit(blocked(gate, "third"), deadline=None))
        waiting = asyncio.ensure_future(queue.submit(lambda: ran.append("abandoned"), deadline=None))
        await asyncio.sleep(0)
        queue.stop_admitting()
        with pytest.raises(Unavailable, match="worker is draining"):
            await queue.submit(lambda: None, deadline=None)
        assert not await queue.wait_idle(0.05)
        assert queue.abandon_queued(Unavailable("gave up")) == 1
        with pytest.raises(Unavailable, match="gave up"):
            await waiting
        gate.set()
        assert await first == "third" and await queue.wait_idle(5)
        queue.stop()
        assert ran == ["first", "second", "third"]
        snap = stats.snapshot(pending=0)
        assert (snap.rejected_execution_count, snap.timeout_count, snap.cancelled_count) == (1, 1, 1)

    asyncio.run(scenario())


def test_throughput_window_with_a_fake_clock() -> None:
    now = [1000.0]
    stats = Stats(clock=lambda: now[0])

    def succeed(n: int) -> None:
        for _ in range(n):
            stats.record_success(queue_ns=0, input_ns=0, infer_ns=2_000_000, output_ns=0, total_ns=2_000_000)

    succeed(5)
    now[0] += 30
    succeed(3)
    snap = stats.snapshot(pending=0)
    assert (snap.throughput_last_minute, snap.peak_throughput_per_minute, snap.inference_count) == (8, 8, 8)
    assert snap.average_inference_time_ms == pytest.approx(2.0)
    now[0] += 45  # the first five are now more than 60 s old
    assert stats.snapshot(pending=0).throughput_last_minute == 3
    now[0] += 100
    snap = stats.snapshot(pending=0)
    assert (snap.throughput_last_minute, snap.peak_throughput_per_minute) == (0, 8)
