"""Dynamic batching: the work queue's batch formation in process, and a real
worker process batching concurrent calls (results bit-exact per caller, a
failing batch fails each of its calls, a malformed call never joins one).

Nothing sleeps to wait for a state: in-process batches are released by
events the test sets, and worker batches are formed with a long queue delay
and a batch size the test fills exactly, so a batch goes the moment it is
full.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import modelbuild as mb
import numpy as np
import pytest
from workerproc import start_worker

from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.inference import grpc_service_pb2_grpc as pb_grpc
from node_agent.worker.errors import DeadlineExceeded, QueueFull
from node_agent.worker.stats import Stats
from node_agent.worker.workqueue import Batching, WorkQueue

LONG_DELAY_US = 30_000_000  # batches in these tests go when full, never by the delay


# ---- the queue, in process ---------------------------------------------------------


def test_queue_forms_batches_by_key_and_rows_with_capacity_and_deadlines() -> None:
    async def scenario() -> None:
        runs: list[list[str]] = []
        started, gate = threading.Event(), threading.Event()

        def run_batch(items: list[str]) -> list[Any]:
            if items == ["block"]:
                started.set()
                assert gate.wait(10)
            runs.append(list(items))
            return [ValueError(f"bad {i}") if i.startswith("bad") else i.upper() for i in items]

        stats = Stats()
        loop = asyncio.get_running_loop()
        queue = WorkQueue(
            threads=1, capacity=4, stats=stats, loop=loop,
            batching=Batching(max_batch_size=4, max_queue_delay_s=0.0), run_batch=run_batch,
        )  # fmt: skip
        queue.start()
        # a call with no key runs alone
        assert await queue.submit("solo", deadline=None) == "SOLO"
        # block the only model thread, then queue calls of two keys behind it
        blocker = asyncio.ensure_future(queue.submit("block", deadline=None))
        assert await loop.run_in_executor(None, started.wait, 10)
        names = [("a1", "a", 1), ("b1", "b", 1), ("a2", "a", 2), ("bad", "a", 1)]
        futures = {n: asyncio.ensure_future(queue.submit(n, deadline=None, key=k, rows=r)) for n, k, r in names}
        expired = asyncio.ensure_future(queue.submit("late", deadline=time.monotonic() - 1, key="a", rows=1))
        extra = [asyncio.ensure_future(queue.submit(f"x{i}", deadline=None, key="c", rows=1)) for i in range(2)]
        await asyncio.sleep(0)  # let every task reach the queue
        # admitted: 4 run slots (threads x max_batch_size) + capacity 4 = 8 pending; the next is refused
        assert queue.pending == 8
        with pytest.raises(QueueFull):
            await queue.submit("refused", deadline=None, key="c", rows=1)
        gate.set()
        assert await blocker == "BLOCK"
        assert [await futures[n] for n in ("a1", "a2", "b1")] == ["A1", "A2", "B1"]
        with pytest.raises(ValueError, match="bad bad"):
            await futures["bad"]  # its own outcome only
        with pytest.raises(DeadlineExceeded):
            await expired
        assert await asyncio.gather(*extra) == ["X0", "X1"]
        queue.stop()
        # a1 + a2 + bad = 4 rows: full, so they ran together; b1 and the c calls ran apart; late never ran
        assert runs == [["solo"], ["block"], ["a1", "a2", "bad"], ["b1"], ["x0", "x1"]]
        assert stats.snapshot(pending=0).timeout_count == 1

    asyncio.run(scenario())


def test_queue_batch_waits_for_the_delay_then_goes_partial_and_drain_releases_it() -> None:
    async def scenario() -> None:
        runs: list[list[int]] = []

        def run_batch(items: list[int]) -> list[int]:
            runs.append(list(items))
            return [i * 10 for i in items]

        loop = asyncio.get_running_loop()
        queue = WorkQueue(
            threads=1, capacity=8, stats=Stats(), loop=loop,
            batching=Batching(max_batch_size=8, max_queue_delay_s=0.0), run_batch=run_batch,
        )  # fmt: skip
        queue.start()
        # delay 0: a lone call is not held back waiting for company
        assert await queue.submit(1, deadline=None, key="k") == 10
        queue.stop()
        held = WorkQueue(
            threads=1, capacity=8, stats=Stats(), loop=loop,
            batching=Batching(max_batch_size=8, max_queue_delay_s=30.0), run_batch=run_batch,
        )  # fmt: skip
        held.start()
        waiting = [asyncio.ensure_future(held.submit(i, deadline=None, key="k")) for i in (2, 3)]
        await asyncio.sleep(0)
        assert held.pending == 2 and not any(w.done() for w in waiting)  # held for company
        held.stop_admitting()  # draining: a partial batch goes at once
        assert await asyncio.gather(*waiting) == [20, 30]
        assert await held.wait_idle(5)
        held.stop()
        assert runs == [[1], [2, 3]]

    asyncio.run(scenario())


def test_whole_batch_failure_fails_every_call_with_the_error() -> None:
    async def scenario() -> None:
        def run_batch(items: list[int]) -> list[int]:
            raise RuntimeError("model exploded")

        queue = WorkQueue(
            threads=1, capacity=8, stats=Stats(), loop=asyncio.get_running_loop(),
            batching=Batching(max_batch_size=3, max_queue_delay_s=30.0), run_batch=run_batch,
        )  # fmt: skip
        queue.start()
        results = await asyncio.gather(
            *(queue.submit(i, deadline=None, key="k") for i in range(3)), return_exceptions=True
        )
        queue.stop()
        assert [str(r) for r in results] == ["model exploded"] * 3

    asyncio.run(scenario())


# ---- a real worker process --------------------------------------------------------


class Worker:
    def __init__(self, address: str, name: str) -> None:
        self.name = name
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)


@pytest.fixture(scope="module")
def batching_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    root = tmp_path_factory.mktemp("batching")
    flags = ["--max-batch-size", "4", "--max-queue-delay-us", str(LONG_DELAY_US)]
    specs = {
        "add": (mb.onnx_add(root / "add.onnx"), "onnx"),
        "gather": (mb.onnx_gather(root / "gather.onnx"), "onnx"),
    }
    procs = []
    try:
        made: dict[str, Worker] = {}
        for name, (path, fmt) in specs.items():
            proc = start_worker(
                model=path, fmt=fmt, name=name, workdir=root / name, queue_capacity=64, extra_args=flags
            )
            procs.append(proc)
            made[name] = Worker(proc.address, name)
        yield made
        for worker in made.values():
            worker.channel.close()
    finally:
        for proc in procs:
            proc.close()


def _request(name: str, x: np.ndarray, *, datatype: str = "FP32", raw: bytes | None = None) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=name)
    req.inputs.add(name="x", datatype=datatype, shape=x.shape)
    req.raw_input_contents.append(x.tobytes() if raw is None else raw)
    return req


def _output(reply: pb.ModelInferResponse) -> np.ndarray:
    out = reply.outputs[0]
    return np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(tuple(out.shape))


def _concurrently(worker: Worker, requests: list[pb.ModelInferRequest]) -> list[Any]:
    """Send every request at once; each result is a reply or the RpcError."""

    def call(req: pb.ModelInferRequest) -> Any:
        try:
            return worker.stub.ModelInfer(req, timeout=60)
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(call, requests))


def _stats(worker: Worker) -> pb.ModelStatistics:
    return worker.stub.ModelStatistics(pb.ModelStatisticsRequest(name=worker.name), timeout=10).model_stats[0]


def test_concurrent_calls_share_one_run_and_each_gets_its_own_rows(batching_workers: dict[str, Worker]) -> None:
    worker = batching_workers["add"]
    before = _stats(worker)
    # 1 + 1 + 2 rows = 4 = max_batch_size: one batch, released when full
    inputs = [np.full((1, 4), 1.5, np.float32), np.full((1, 4), -7.0, np.float32),
              np.arange(8, dtype=np.float32).reshape(2, 4) * 0.1]  # fmt: skip
    replies = _concurrently(worker, [_request("add", x) for x in inputs])
    for x, reply in zip(inputs, replies, strict=True):
        assert isinstance(reply, pb.ModelInferResponse), reply
        assert np.array_equal(_output(reply), x + mb.ADD_CONSTANT)  # bit-exact, own rows only
    after = _stats(worker)
    assert after.inference_count - before.inference_count == 4  # inferences, as Triton counts: 1 + 1 + 2 rows
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3  # calls
    assert after.execution_count - before.execution_count == 1  # one model run served all three
    assert any(b.batch_size == 4 and b.compute_infer.count >= 1 for b in after.batch_stats)  # the rows it executed


def test_malformed_call_never_joins_a_batch(batching_workers: dict[str, Worker]) -> None:
    worker = batching_workers["add"]
    good = [np.full((1, 4), float(i), np.float32) for i in range(4)]
    bad = _request("add", np.zeros((1, 4), np.float32), raw=b"\0" * 12)  # 12 bytes, expected 16
    replies = _concurrently(worker, [bad] + [_request("add", x) for x in good])
    assert isinstance(replies[0], grpc.RpcError) and replies[0].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "byte size mismatch" in replies[0].details()
    for x, reply in zip(good, replies[1:], strict=True):
        assert isinstance(reply, pb.ModelInferResponse), reply
        assert np.array_equal(_output(reply), x + mb.ADD_CONSTANT)


def test_a_failing_batch_fails_each_call_and_the_next_batch_is_clean(batching_workers: dict[str, Worker]) -> None:
    worker = batching_workers["gather"]
    ok = [np.array([0], np.int64), np.array([2, 1], np.int64)]
    out_of_range = np.array([7], np.int64)
    replies = _concurrently(worker, [_request("gather", x, datatype="INT64") for x in [*ok, out_of_range]])
    for reply in replies:  # 4 rows: one batch, and the model raised for it
        assert isinstance(reply, grpc.RpcError) and reply.code() == grpc.StatusCode.INTERNAL, reply
        assert "model execution failed" in reply.details()
    table = np.array([10.0, 20.0, 30.0], np.float32)
    clean = [np.array([0, 1], np.int64), np.array([2], np.int64), np.array([1], np.int64)]
    replies = _concurrently(worker, [_request("gather", x, datatype="INT64") for x in clean])
    for x, reply in zip(clean, replies, strict=True):
        assert isinstance(reply, pb.ModelInferResponse), reply
        assert np.array_equal(_output(reply), table[x])


def test_batching_needs_a_dynamic_first_dimension(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as info:
        start_worker(
            model=mb.onnx_warmup_fails(tmp_path / "static.onnx"), fmt="onnx", name="static", workdir=tmp_path,
            extra_args=["--max-batch-size", "8"],
        )  # fmt: skip
    assert "exited with code 3" in str(info.value)
    assert "dynamic batching needs a dynamic first (batch) dimension" in str(info.value)


# ---- the way in: CLI flags -> variant -> agent -> worker argv ----------------------


def test_cli_batching_flags_become_a_variant_and_worker_flags(tmp_path: Path) -> None:
    from modelfleet.cli import cmd_deployments
    from modelfleet.cli.main import build_parser
    from modelfleet.v1 import agent_pb2, common_pb2
    from node_agent.supervisor import SupervisorConfig, WorkerHandle

    args = build_parser().parse_args([
        "deployments", "start", "mlp", "--model-threads", "2", "--queue-capacity", "64", "--env", "A=1",
        "--max-batch-size", "32", "--max-queue-delay", "500us",
    ])  # fmt: skip
    req, _ = cmd_deployments.build_spec(args)
    req.model_id = args.model_id
    cmd_deployments.add_batching(req, args)
    (variant,) = req.variants
    assert (req.model_id, req.model_threads, req.queue_capacity, dict(req.env)) == ("", 0, 0, {})
    assert (variant.model_id, variant.weight, variant.model_threads, variant.queue_capacity) == ("mlp", 100, 2, 64)
    assert dict(variant.env) == {"A": "1"}
    assert (variant.max_batch_size, variant.max_queue_delay_us) == (32, 500)
    # with --variant, every variant batches
    args = build_parser().parse_args([
        "deployments", "start", "--variant", "mlp:1=60", "--variant", "mlp:2=40", "--max-batch-size", "8",
    ])  # fmt: skip
    req, _ = cmd_deployments.build_spec(args)
    cmd_deployments.add_batching(req, args)
    assert [(v.model_version, v.weight, v.max_batch_size, v.max_queue_delay_us) for v in req.variants] == [
        (1, 60, 8, 0), (2, 40, 8, 0)]  # fmt: skip

    spec = agent_pb2.AllocationSpec(
        allocation_id="mlp-1", deployment_id="mlp", variant="v1", format=common_pb2.MODEL_FORMAT_ONNX,
        max_batch_size=32, max_queue_delay_us=500,
    )  # fmt: skip

    async def no_fetch(_: agent_pb2.AllocationSpec) -> Path:
        raise AssertionError("not fetched")

    handle = WorkerHandle(spec, config=SupervisorConfig(data_dir=tmp_path), fetch_model=no_fetch, on_change=lambda h: None)
    argv = handle._argv(tmp_path / "model.onnx")
    assert argv[argv.index("--max-batch-size") + 1] == "32" and argv[argv.index("--max-queue-delay-us") + 1] == "500"
    spec.max_batch_size = 0
    assert "--max-batch-size" not in WorkerHandle(
        spec, config=SupervisorConfig(data_dir=tmp_path), fetch_model=no_fetch, on_change=lambda h: None
    )._argv(tmp_path / "model.onnx")
