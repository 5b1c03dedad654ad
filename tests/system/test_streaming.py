"""ModelStreamInfer (Triton's bidirectional stream) through real processes: a
worker directly, the control plane's gateway, and the real tritonclient's
start_stream / async_stream_infer against the gateway.

Every request is answered once, matched by id and bit-exact; a malformed
request gets `error_message` naming the input (with its id) while the
stream goes on; the answers are counted like ModelInfer calls. Unit tests
drive modelfleet.streams (completion order, the window, errors, closing)
on a real event loop.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cluster import ROOT, Cluster, authed_channel
from modelbuild import ADD_CONSTANT, onnx_add

from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.inference import grpc_service_pb2_grpc as pb_grpc
from modelfleet.streams import answer_concurrently
from modelfleet.v1 import common_pb2
from modelfleet.v1 import deployments_pb2 as dpb

TRITON = ROOT / "tests" / "tools" / "triton_call.py"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("streaming")
    c = Cluster(root)
    try:
        c.start_control_plane()
        c.start_agent("node-a", cpus=4)
        c.wait_nodes(1)
        assert c.upload(onnx_add(root / "add.onnx"), "add").state == common_pb2.MODEL_STATE_NORMAL
        req = dpb.StartDeploymentRequest(model_id="add", model_threads=2, wait_for=dpb.WAIT_FOR_STARTED)
        req.timeout.FromSeconds(60)
        (entry,) = c.deployments.StartDeployment(req, timeout=90).allocation.routing_table.values()
        yield {"cluster": c, "worker": entry.worker_address, "root": root}
    finally:
        c.close()


def _request(x: np.ndarray, request_id: str) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="add", id=request_id)
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    return req


def _x(i: int) -> np.ndarray:
    return np.full((2, 4), float(i), np.float32)


def _statistics(address: str, token: str) -> int:
    with authed_channel(address, token) as channel:
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(pb.ModelStatisticsRequest(name="add"), timeout=10)
    return int(stats.model_stats[0].inference_count)


@pytest.mark.parametrize("target", ["worker", "gateway"])
def test_a_stream_answers_every_request_once_and_a_bad_one_does_not_end_it(fleet: dict[str, Any], target: str) -> None:
    c: Cluster = fleet["cluster"]
    address = fleet["worker"] if target == "worker" else c.addr
    before = _statistics(fleet["worker"], c.token)
    requests = [_request(_x(i), str(i)) for i in range(30)]
    requests.insert(15, _request(np.ones((2, 3), np.float32), "bad"))  # 3 columns where the model takes 4
    with authed_channel(address, c.token) as channel:
        answers = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(requests), timeout=60))
    assert len(answers) == 31
    errors = [a for a in answers if a.error_message]
    assert len(errors) == 1 and errors[0].infer_response.id == "bad"
    assert "'x'" in errors[0].error_message and "expected" in errors[0].error_message and "got" in errors[0].error_message
    replies = {a.infer_response.id: a.infer_response for a in answers if not a.error_message}
    assert sorted(replies, key=int) == [str(i) for i in range(30)]
    for request_id, reply in replies.items():
        y = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(2, 4)
        np.testing.assert_array_equal(y, _x(int(request_id)) + ADD_CONSTANT)
    # counted like ModelInfer calls at the worker (the bad one never reaches it through the gateway)
    assert _statistics(fleet["worker"], c.token) - before == 30


def test_a_stream_of_an_unknown_deployment_answers_each_request_with_an_error(fleet: dict[str, Any]) -> None:
    c: Cluster = fleet["cluster"]
    requests = [_request(_x(1), "a"), pb.ModelInferRequest(model_name="nowhere", id="b"), _request(_x(2), "c")]
    with authed_channel(c.addr, c.token) as channel:
        answers = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(requests), timeout=60))
    by_id = {a.infer_response.id: a for a in answers}
    assert set(by_id) == {"a", "b", "c"}
    assert by_id["b"].error_message == "deployment 'nowhere' not found"
    assert not by_id["a"].error_message and not by_id["c"].error_message


def test_a_stream_needs_a_key_with_infer(fleet: dict[str, Any]) -> None:
    c: Cluster = fleet["cluster"]
    viewer = c.create_key("viewer").token
    with authed_channel(c.addr, viewer) as channel, pytest.raises(grpc.RpcError) as err:
        list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([_request(_x(1), "a")]), timeout=30))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_tritonclient_stream_through_the_gateway(fleet: dict[str, Any], tmp_path: Path) -> None:
    c: Cluster = fleet["cluster"]
    np.save(tmp_path / "x.npy", _x(3))
    np.save(tmp_path / "bad.npy", np.ones((2, 3), np.float32))
    out = subprocess.run(
        [sys.executable, str(TRITON), "stream", "--url", c.addr, "--model", "add", "--input", f"x={tmp_path / 'x.npy'}",
         "--bad", f"x={tmp_path / 'bad.npy'}", "--count", "8", "--out-dir", str(tmp_path), "--token", c.token],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert sorted(report["results"], key=int) == [str(i) for i in range(8)]
    for saved in report["results"].values():
        np.testing.assert_array_equal(np.load(saved["y"]), _x(3) + ADD_CONSTANT)
    assert len(report["errors"]) == 1 and "'x'" in report["errors"][0]


# ---- modelfleet.streams on a real event loop -----------------------------------------------------
def test_answers_come_in_completion_order_and_the_window_holds_back_reading() -> None:
    async def scenario() -> None:
        read: list[int] = []
        gates = {i: asyncio.Event() for i in range(6)}

        async def requests() -> AsyncIterator[int]:
            for i in range(6):
                read.append(i)
                yield i

        async def handle(i: int) -> str:
            await gates[i].wait()
            return f"answer {i}"

        stream = answer_concurrently(requests(), handle, window=3)
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        assert read == [0, 1, 2]  # the window is full: nothing more is read
        gates[2].set()
        assert await asyncio.wait_for(first, 5) == "answer 2"  # the first to finish comes first
        second = asyncio.ensure_future(anext(stream))  # gRPC asks for the next once one is sent
        await asyncio.sleep(0.05)
        assert read == [0, 1, 2, 3]  # one answer sent, one more request read
        for i in (3, 0, 1, 4, 5):
            gates[i].set()
        rest = [await asyncio.wait_for(second, 5)] + [answer async for answer in stream]
        assert sorted(rest) == [f"answer {i}" for i in (0, 1, 3, 4, 5)]

    asyncio.run(scenario())


def test_a_broken_request_stream_ends_after_the_answers_made_and_closing_cancels_the_rest() -> None:
    async def scenario() -> None:
        async def broken() -> AsyncIterator[int]:
            yield 1
            raise ValueError("undecodable message")

        async def echo(i: int) -> int:
            return i

        got: list[int] = []
        with pytest.raises(ValueError, match="undecodable"):
            async for answer in answer_concurrently(broken(), echo):
                got.append(answer)
        assert got == [1]

        cancelled = asyncio.Event()

        async def forever() -> AsyncIterator[int]:
            yield 1
            yield 2

        async def slow(i: int) -> int:
            if i == 2:
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    cancelled.set()
                    raise
            return i

        stream = answer_concurrently(forever(), slow)
        assert await anext(stream) == 1
        await stream.aclose()  # the client went away
        await asyncio.wait_for(cancelled.wait(), 5)

    asyncio.run(scenario())
