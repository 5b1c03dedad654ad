"""The shared wire rules and RPC plumbing of modelfleet/, in process.

- modelfleet.wire.v2: a table of bad tensors -> the exact message, the same
  from the gateway's check and the worker's decode; a property test that the
  check accepts exactly what the decode accepts (and refuses with the same
  words), and that what the decode accepts is the tensors that were sent.
- modelfleet.rpc: `wrap_handler` keeps each of the four RPC kinds, and the
  coroutine / async-generator sort of a streaming behaviour; `ErrorMapping`
  on a real grpc.aio server turns domain errors, unexpected errors, bad and
  oversized request messages into their statuses for every kind.
- modelfleet.net.is_loopback.
"""

from __future__ import annotations

import asyncio
import inspect
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane import errors as cp_errors
from modelfleet import rpc
from modelfleet.errors import StatusError
from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.net import is_loopback
from modelfleet.v1 import common_pb2, models_pb2
from modelfleet.wire import v2
from node_agent.runtime.base import TensorSpec
from node_agent.worker import errors as worker_errors
from node_agent.worker.codec import RequestDecoder

# ---- the V2 request rules -----------------------------------------------------------------
INPUTS = (
    TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),
    TensorSpec(name="s", datatype="BYTES", shape=(-1,)),
    TensorSpec(name="k", datatype="INT8", shape=(2,)),
)
OUTPUTS = (TensorSpec(name="y", datatype="FP32", shape=(-1, 4)), TensorSpec(name="z", datatype="BYTES", shape=(-1,)))


def _gateway() -> v2.RequestRules:
    return v2.RequestRules(inputs=INPUTS, outputs=OUTPUTS, error=cp_errors.InvalidArgument)


def _worker() -> RequestDecoder:
    return RequestDecoder(inputs=INPUTS, outputs=OUTPUTS)


def _blob(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def good() -> pb.ModelInferRequest:
    """A raw request every rule accepts."""
    req = pb.ModelInferRequest(model_name="m", id="r")
    req.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    req.raw_input_contents.append(np.arange(8, dtype=np.float32).tobytes())
    req.inputs.add(name="s", datatype="BYTES", shape=[2])
    req.raw_input_contents.append(_blob(b"ab", b""))
    req.inputs.add(name="k", datatype="INT8", shape=[2])
    req.raw_input_contents.append(np.array([-1, 7], np.int8).tobytes())
    return req


def typed() -> pb.ModelInferRequest:
    """The same tensors as typed contents."""
    req = pb.ModelInferRequest(model_name="m", id="r")
    req.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(range(8))
    req.inputs.add(name="s", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"ab", b""])
    req.inputs.add(name="k", datatype="INT8", shape=[2]).contents.int_contents.extend([-1, 7])
    return req


def _edit(build: Callable[[], pb.ModelInferRequest], change: Callable[[pb.ModelInferRequest], object]) -> pb.ModelInferRequest:
    req = build()
    change(req)
    return req


def _drop_input(req: pb.ModelInferRequest, index: int) -> None:
    del req.inputs[index]
    if req.raw_input_contents:
        del req.raw_input_contents[index]


# (label, request, the exact message of both modes)
BAD: list[tuple[str, pb.ModelInferRequest, str]] = [
    ("raw count", _edit(good, lambda r: r.raw_input_contents.append(b"")),
     "raw_input_contents has 4 entries, expected 3 (one per input)"),
    ("unknown input", _edit(good, lambda r: setattr(r.inputs[0], "name", "q")),
     "unknown input 'q'; the model's inputs are ['k', 's', 'x']"),
    ("repeated input", _edit(good, lambda r: (r.inputs.append(r.inputs[0]), r.raw_input_contents.append(bytes(32)))),
     "input 'x' appears more than once"),
    ("missing input", _edit(good, lambda r: _drop_input(r, 0)), "missing input 'x'"),
    ("missing inputs", _edit(good, lambda r: (_drop_input(r, 2), _drop_input(r, 0))), "missing input 'x' (and ['k'])"),
    ("datatype", _edit(good, lambda r: setattr(r.inputs[0], "datatype", "INT64")),
     "input 'x': datatype mismatch, expected FP32, got INT64"),
    ("no datatype", _edit(good, lambda r: setattr(r.inputs[0], "datatype", "")),
     "input 'x': datatype mismatch, expected FP32, got (none)"),
    ("negative dimension", _edit(good, lambda r: r.inputs[0].shape.__setitem__(0, -2)),
     "input 'x': negative dimension in shape [-2, 4]"),
    ("rank", _edit(good, lambda r: r.inputs[0].shape.append(1)), "input 'x': shape mismatch, expected [-1, 4], got [2, 4, 1]"),
    ("dimension", _edit(good, lambda r: r.inputs[0].shape.__setitem__(1, 5)),
     "input 'x': shape mismatch, expected [-1, 4], got [2, 5]"),
    ("raw and typed", _edit(good, lambda r: r.inputs[0].contents.fp32_contents.extend([0.0] * 8)),
     "input 'x': both raw_input_contents and typed contents are set"),
    ("byte size", _edit(good, lambda r: r.raw_input_contents.__setitem__(0, bytes(40))),
     "input 'x': byte size mismatch, expected 32, got 40"),
    ("truncated BYTES prefix", _edit(good, lambda r: r.raw_input_contents.__setitem__(1, _blob(b"ab") + b"\x05\x00")),
     "input 's': malformed BYTES content: truncated length prefix at byte 6 (element 1)"),
    ("BYTES element past the end", _edit(good, lambda r: r.raw_input_contents.__setitem__(1, struct.pack("<I", 9) + b"abc")),
     "input 's': malformed BYTES content: element 0 declares 9 bytes, only 3 remain"),
    ("BYTES too few", _edit(good, lambda r: r.raw_input_contents.__setitem__(1, _blob(b"a"))),
     "input 's': element count mismatch, expected 2, got 1"),
    ("BYTES too many", _edit(good, lambda r: r.raw_input_contents.__setitem__(1, _blob(b"a", b"b", b"c", b"d"))),
     "input 's': element count mismatch, expected 2, got more than 2"),
    ("typed count", _edit(typed, lambda r: r.inputs[0].contents.fp32_contents.append(1.0)),
     "input 'x': element count mismatch, expected 8, got 9"),
    ("typed field", _edit(typed, lambda r: r.inputs[2].contents.fp32_contents.append(1.0)),
     "input 'k': contents.fp32_contents does not match datatype INT8 (expected int_contents)"),
    ("typed range", _edit(typed, lambda r: r.inputs[2].contents.int_contents.__setitem__(1, 300)),
     "input 'k': value 300 out of range for INT8 ([-128, 127])"),
    ("typed range low", _edit(typed, lambda r: r.inputs[2].contents.int_contents.__setitem__(0, -129)),
     "input 'k': value -129 out of range for INT8 ([-128, 127])"),
    ("unknown output", _edit(good, lambda r: r.outputs.add(name="nope")),
     "unknown requested output 'nope'; the model's outputs are ['y', 'z']"),
    ("repeated output", _edit(good, lambda r: (r.outputs.add(name="y"), r.outputs.add(name="y"))),
     "requested outputs repeat a name: ['y', 'y']"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "request_", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_tensor_gets_the_same_exact_message_from_the_gateway_and_the_worker(
    label: str, request_: pb.ModelInferRequest, message: str
) -> None:
    with pytest.raises(cp_errors.InvalidArgument) as at_gateway:
        _gateway().check(request_)
    with pytest.raises(worker_errors.InvalidArgument) as at_worker:
        _worker().decode(request_)
    assert at_gateway.value.message == message
    assert at_worker.value.message == message
    assert at_gateway.value.code == at_worker.value.code == "INVALID_ARGUMENT"


def test_fp16_must_be_raw_and_an_overflowing_shape_is_refused_by_both() -> None:
    half = pb.ModelInferRequest()
    half.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    spec = [TensorSpec(name="h", datatype="FP16", shape=(1,))]
    with pytest.raises(cp_errors.InvalidArgument, match=r"^input 'h': FP16 data must be sent in raw_input_contents$"):
        v2.RequestRules(inputs=spec, outputs=(), error=cp_errors.InvalidArgument).check(half)
    huge = _edit(good, lambda r: r.inputs[0].shape.__setitem__(0, 2**61))
    with pytest.raises(cp_errors.InvalidArgument) as at_gateway:
        _gateway().check(huge)
    assert at_gateway.value.message == "input 'x': shape [2305843009213693952, 4] overflows: 9223372036854775808 elements"
    with pytest.raises(worker_errors.InvalidArgument) as at_worker:
        _worker().decode(huge)
    assert at_worker.value.message == "input 'x': byte size mismatch, expected 36893488147419103232, got 32"


def test_what_both_accept_decodes_to_the_tensors_sent() -> None:
    for build in (good, typed):
        req = build()
        _gateway().check(req)
        decoded = _worker().decode(req)
        assert decoded.inputs["x"].tolist() == np.arange(8, dtype=np.float32).reshape(2, 4).tolist()
        assert decoded.inputs["s"].tolist() == [b"ab", b""]
        assert decoded.inputs["k"].dtype == np.int8 and decoded.inputs["k"].tolist() == [-1, 7]
        assert decoded.outputs == ("y", "z") and decoded.id == "r"


def test_a_registry_model_gives_the_gateway_its_specs_and_any_shape_for_undeclared_torchscript() -> None:
    model = models_pb2.Model(format=common_pb2.MODEL_FORMAT_TORCHSCRIPT)
    model.inputs.add(name="a", datatype="FP32")
    model.outputs.add(name="b", datatype="FP32", shape=[-1])
    (a,), (b,) = v2.model_specs(model)
    assert a == v2.Spec("a", "FP32", (), any_shape=True) and b == v2.Spec("b", "FP32", (-1,))
    rules = v2.RequestRules.of_model(model, error=cp_errors.InvalidArgument)
    req = pb.ModelInferRequest()
    req.inputs.add(name="a", datatype="FP32", shape=[1, 2, 3])
    req.raw_input_contents.append(bytes(24))
    rules.check(rules.parse(req.SerializeToString()))
    with pytest.raises(cp_errors.InvalidArgument, match="^malformed ModelInferRequest: "):
        rules.parse(b"\x0a\x03add\x2a\xff\xff\xff\x7f")


# Mutations the property test draws from: each changes one thing a rule looks at.
def _mutations() -> st.SearchStrategy[Callable[[pb.ModelInferRequest], None]]:
    index = st.integers(0, 2)
    dims = st.lists(st.integers(-2, 6), max_size=3)
    raw = st.binary(max_size=40)
    name = st.sampled_from(["x", "s", "k", "q", ""])
    datatype = st.sampled_from(["FP32", "BYTES", "INT8", "INT64", "FP16", ""])

    def shape(i: int, d: list[int]) -> Callable[[pb.ModelInferRequest], None]:
        def change(r: pb.ModelInferRequest) -> None:
            del r.inputs[i].shape[:]
            r.inputs[i].shape.extend(d)

        return change

    def set_raw(i: int, data: bytes) -> Callable[[pb.ModelInferRequest], None]:
        return lambda r: r.raw_input_contents.__setitem__(i, data) if len(r.raw_input_contents) > i else None

    def rename(i: int, n: str) -> Callable[[pb.ModelInferRequest], None]:
        return lambda r: setattr(r.inputs[i], "name", n)

    def retype(i: int, t: str) -> Callable[[pb.ModelInferRequest], None]:
        return lambda r: setattr(r.inputs[i], "datatype", t)

    def ints(i: int, values: list[int]) -> Callable[[pb.ModelInferRequest], None]:
        return lambda r: r.inputs[i].contents.int_contents.extend(values)

    def floats(i: int, count: int) -> Callable[[pb.ModelInferRequest], None]:
        return lambda r: r.inputs[i].contents.fp32_contents.extend([0.5] * count)

    def output(n: str) -> Callable[[pb.ModelInferRequest], None]:
        return lambda r: r.outputs.add(name=n)

    return st.one_of(
        st.builds(shape, index, dims),
        st.builds(set_raw, index, raw),
        st.builds(set_raw, st.just(1), st.lists(st.binary(max_size=3), max_size=4).map(lambda items: _blob(*items))),
        st.builds(rename, index, name),
        st.builds(retype, index, datatype),
        st.builds(ints, index, st.lists(st.integers(-300, 300), max_size=3)),
        st.builds(floats, index, st.integers(0, 9)),
        st.builds(output, st.sampled_from(["y", "z", "nope"])),
        st.just(lambda r: _drop_input(r, 1)),
        st.just(lambda r: r.raw_input_contents.append(b"")),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from([good, typed]), changes=st.lists(_mutations(), max_size=3))
def test_the_gateway_check_accepts_exactly_what_the_worker_decode_accepts(
    base: Callable[[], pb.ModelInferRequest], changes: list[Callable[[pb.ModelInferRequest], None]]
) -> None:
    req = base()
    for change in changes:
        try:
            change(req)
        except IndexError:  # the input it changes was dropped
            pass
    gateway: str | None = None
    worker: str | None = None
    try:
        _gateway().check(req)
    except cp_errors.InvalidArgument as exc:
        gateway = exc.message
    try:
        decoded = _worker().decode(req)
    except worker_errors.InvalidArgument as exc:
        worker = exc.message
    assert gateway == worker  # both None (accepted) or the same refusal
    if worker is None:
        for tensor, sent in zip(req.inputs, decoded.inputs.values(), strict=True):
            assert sent.shape == tuple(tensor.shape)


# ---- handler wrapping ---------------------------------------------------------------------
async def _coroutine(request: Any, context: Any) -> Any:
    return request


async def _generator(request: Any, context: Any) -> AsyncIterator[Any]:
    yield request


FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


# a behaviour with a response stream is an async generator or a coroutine; a unary one a coroutine
SORTS = [(field, b) for field in FACTORIES for b in ([_coroutine, _generator] if field.endswith("stream") else [_coroutine])]


@pytest.mark.parametrize(("field", "behaviour"), SORTS, ids=[f"{f}-{b.__name__.strip('_')}" for f, b in SORTS])
def test_wrap_handler_keeps_the_kind_and_the_sort_of_the_behaviour(field: str, behaviour: Callable[..., Any]) -> None:
    handler = FACTORIES[field](behaviour, request_deserializer=bytes, response_serializer=bytes)
    seen: list[tuple[str, rpc.RpcKind]] = []

    def coroutine(fn: Callable[..., Any], kind: rpc.RpcKind) -> Callable[..., Any]:
        seen.append(("coroutine", kind))

        async def call(request: Any, context: Any) -> Any:
            return await fn(request, context)

        return call

    def generator(fn: Callable[..., Any], kind: rpc.RpcKind) -> Callable[..., Any]:
        seen.append(("generator", kind))

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            async for item in fn(request, context):
                yield item

        return stream

    deserializer = rpc.tolerant(bytes)
    wrapped = rpc.wrap_handler(handler, coroutine=coroutine, generator=generator, request_deserializer=deserializer)
    assert wrapped.request_streaming == handler.request_streaming
    assert wrapped.response_streaming == handler.response_streaming
    assert wrapped.request_deserializer is deserializer and wrapped.response_serializer is bytes
    for other in FACTORIES:
        assert (getattr(wrapped, other) is not None) == (other == field)
    inner = getattr(wrapped, field)
    assert inspect.isasyncgenfunction(inner) == inspect.isasyncgenfunction(behaviour)
    expected = rpc.RpcKind(streamed_requests=field.startswith("stream"), streamed_responses=field.endswith("stream"))
    assert seen == [("generator" if behaviour is _generator else "coroutine", expected)]


def test_a_handler_with_no_behaviour_is_left_alone() -> None:
    handler = grpc.unary_unary_rpc_method_handler(_coroutine)._replace(unary_unary=None)
    assert rpc.wrap_handler(handler, coroutine=lambda f, k: f, generator=lambda f, k: f) is handler


# ---- the error mapping on a real server -------------------------------------------------------
class Throttled(StatusError):
    code = "RESOURCE_EXHAUSTED"


def _refusing(payload: bytes) -> None:
    if payload == b"domain":
        raise Throttled("slow down", trailers={"grpc-retry-pushback-ms": "250"})
    if payload == b"bug":
        raise RuntimeError("a bug with a secret in it")


def _parse(data: bytes) -> bytes:
    if data.startswith(b"\xff"):
        raise ValueError("not a message")
    return data


async def _unary(request: bytes, context: Any) -> bytes:
    _refusing(request)
    return request


async def _server_streaming(request: bytes, context: Any) -> AsyncIterator[bytes]:
    _refusing(request)
    yield request


async def _writing(request: bytes, context: Any) -> None:  # a coroutine with a response stream (health Watch)
    _refusing(request)
    await context.write(request)


async def _client_streaming(requests: AsyncIterator[bytes], context: Any) -> bytes:
    parts = [r async for r in requests]
    for part in parts:
        _refusing(part)
    return b"".join(parts)


async def _bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        _refusing(request)
        yield request


def _handlers() -> dict[str, grpc.RpcMethodHandler]:
    kw: dict[str, Any] = {"request_deserializer": _parse, "response_serializer": bytes}
    return {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, **kw),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_streaming, **kw),
        "Writing": grpc.unary_stream_rpc_method_handler(_writing, **kw),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_streaming, **kw),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, **kw),
    }


async def _call(
    channel: grpc.aio.Channel, method: str, payload: bytes
) -> tuple[grpc.StatusCode, str, dict[str, str], list[bytes]]:
    path = f"/test.Wire/{method}"
    try:
        if method == "Unary":
            replies = [await channel.unary_unary(path)(payload)]
        elif method in ("ServerStream", "Writing"):
            replies = [r async for r in channel.unary_stream(path)(payload)]
        elif method == "ClientStream":
            replies = [await channel.stream_unary(path)(iter([b"ok", payload]))]
        else:
            replies = [r async for r in channel.stream_stream(path)(iter([b"ok", payload]))]
    except grpc.aio.AioRpcError as exc:
        trailers = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
        return exc.code(), exc.details() or "", trailers, []
    return grpc.StatusCode.OK, "", {}, replies


def test_error_mapping_gives_every_kind_the_same_statuses(caplog: pytest.LogCaptureFixture) -> None:
    reported: list[str] = []

    async def scenario() -> dict[tuple[str, bytes], tuple[grpc.StatusCode, str, dict[str, str], list[bytes]]]:
        mapping = rpc.ErrorMapping(
            limit=rpc.MessageLimit(max_bytes=64, scope="test calls", exempt=frozenset({"/test.Wire/Bidi"})),
            on_status={"/test.Wire/Unary": reported.append},
        )
        server = grpc.aio.server(interceptors=[mapping])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Wire", _handlers()),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return {
                    (method, payload): await _call(channel, method, payload)
                    for method in _handlers()
                    for payload in (b"fine", b"domain", b"bug", b"\xffgarbage", b"L" * 65)
                }
        finally:
            await server.stop(None)

    outcomes = asyncio.run(scenario())
    for method in _handlers():
        ok = outcomes[(method, b"fine")]
        assert ok[0] == grpc.StatusCode.OK, (method, ok)
        assert outcomes[(method, b"domain")][:3] == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", {"grpc-retry-pushback-ms": "250"}
        ), method  # fmt: skip
        assert outcomes[(method, b"bug")][:2] == (grpc.StatusCode.INTERNAL, "internal error"), method
        code, details, *_ = outcomes[(method, b"\xffgarbage")]
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "malformed request message: not a message"), method
        code, details, *_ = outcomes[(method, b"L" * 65)]
        if method == "Bidi":  # exempt from the limit
            assert code == grpc.StatusCode.OK, (method, code, details)
        else:
            assert (code, details) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED, "request message of 65 bytes is larger than the 64-byte limit of test calls"
            ), method  # fmt: skip
    assert "a bug with a secret in it" not in " ".join(o[1] for o in outcomes.values())
    assert any("unexpected error in /test.Wire/Unary" in r.getMessage() for r in caplog.records)
    assert reported == ["OK", "RESOURCE_EXHAUSTED", "INTERNAL", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"]


# ---- addresses ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1:7000", True), ("127.9.9.9:1", True), ("[::1]:7000", True), ("localhost:7000", True),
     ("0.0.0.0:7000", False), ("[::]:7000", False), ("10.1.2.3:7000", False), ("example.com:7000", False)],
)  # fmt: skip
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback
