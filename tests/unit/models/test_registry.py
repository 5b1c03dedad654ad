"""ModelRegistry and BlobStore against SqliteStore and real probe subprocesses.

Models are built in the test (onnx helper API, torch.jit.script). Uploads are
driven with async generators of UploadModelRequest, as the servicer will.
Tests that need a probe that hangs or crashes use a stand-in interpreter
(a shell script passed as `python=`); every other upload runs the real
`python -m node_agent.runtime.probe`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from control_plane.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from control_plane.models.blobs import BlobStore
from control_plane.models.registry import ModelRegistry
from control_plane.store.sqlite import SqliteStore
from modelfleet.v1 import common_pb2, models_pb2

ONNX = common_pb2.MODEL_FORMAT_ONNX
TORCHSCRIPT = common_pb2.MODEL_FORMAT_TORCHSCRIPT
NORMAL = common_pb2.MODEL_STATE_NORMAL
INVALID = common_pb2.MODEL_STATE_INVALID
CHUNK = 64 << 10


def arun(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (no pytest-asyncio here)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


# ---- models -------------------------------------------------------------------
@functools.cache
def onnx_model(width: int = 8192, seed: int = 0) -> bytes:
    """y = x @ W: x [batch, 4] FP32 -> y [batch, width]; W makes it ~128 KiB."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).standard_normal((4, width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(weights, name="W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@functools.cache
def torchscript_model() -> bytes:
    import torch

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Double()), buffer)
    return buffer.getvalue()


def meta(model_id: str = "m", *, fmt: int = ONNX, version: int = 0, **kw: Any) -> models_pb2.UploadModelRequest:
    return models_pb2.UploadModelRequest(
        metadata=models_pb2.UploadModelMetadata(model_id=model_id, format=fmt, version=version, **kw)  # type: ignore[arg-type]
    )


async def stream(
    first: models_pb2.UploadModelRequest | None, data: bytes, *, chunk: int = CHUNK
) -> AsyncIterator[models_pb2.UploadModelRequest]:
    if first is not None:
        yield first
    for i in range(0, len(data), chunk):
        yield models_pb2.UploadModelRequest(chunk=data[i : i + chunk])


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec(name: str, datatype: str, shape: list[int]) -> common_pb2.TensorSpec:
    return common_pb2.TensorSpec(name=name, datatype=datatype, shape=shape)


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for the probe's interpreter."""
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def env(tmp_path: Path) -> Any:
    store = SqliteStore(tmp_path / "modelfleet.db")
    blobs = BlobStore(tmp_path / "blobs")
    used: set[tuple[str, int]] = set()

    def make(**kw: Any) -> ModelRegistry:
        return ModelRegistry(store=store, blobs=blobs, in_use=lambda m, v: (m, v) in used, **kw)

    yield SimpleNamespace(store=store, blobs=blobs, root=tmp_path / "blobs", used=used, make=make, registry=make())
    store.close()


def assert_nothing_kept(env: Any) -> None:
    """No blob, no temp file, no record."""
    assert files_under(env.root) == []
    assert (env.root / "tmp").is_dir()
    assert env.store.list_models() == []


# ---- uploads that validate --------------------------------------------------
@arun
async def test_upload_onnx_is_normal_with_specs(env: Any) -> None:
    data = onnx_model()
    assert len(data) > 2 * CHUNK
    model = await env.registry.upload(stream(meta("matmul", description="x @ W"), data))
    assert model.state == NORMAL, model.state_reason
    assert model.state_reason == ""
    assert (model.model_id, model.version, model.format) == ("matmul", 1, ONNX)
    assert model.model_bytes == len(data)
    assert model.sha256 == sha(data)
    assert model.description == "x @ W"
    assert model.created_at.seconds > 0
    assert list(model.inputs) == [spec("x", "FP32", [-1, 4])]
    assert list(model.outputs) == [spec("y", "FP32", [-1, 8192])]
    assert files_under(env.root) == [sha(data)]
    assert env.blobs.path(sha(data)).read_bytes() == data
    # Durable: a fresh store on the same file has the record.
    reopened = SqliteStore(env.store.path)
    try:
        assert reopened.get_model("matmul", 1) == model
    finally:
        reopened.close()
    assert env.registry.get("matmul") == model
    assert env.registry.get("matmul", 1) == model


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/save
@arun
async def test_upload_torchscript_is_normal(env: Any) -> None:
    data = torchscript_model()
    declared_in = [spec("x", "FP32", [-1, 3])]
    model = await env.registry.upload(
        stream(meta("double", fmt=TORCHSCRIPT, inputs=declared_in, sha256=sha(data).upper()), data)
    )
    assert model.state == NORMAL, model.state_reason
    assert model.format == TORCHSCRIPT
    assert model.sha256 == sha(data)
    assert [(s.name, s.datatype) for s in model.inputs] == [("x", "FP32")]
    assert list(model.inputs[0].shape) == [-1, 3]
    assert len(model.outputs) >= 1


@arun
async def test_corrupt_bytes_are_invalid_with_the_loaders_reason(env: Any) -> None:
    data = b"this is not an onnx model " * 1000
    model = await env.registry.upload(stream(meta("broken", total_bytes=len(data)), data))
    assert model.state == INVALID
    assert model.state_reason
    assert len(model.state_reason) <= 2000
    assert "probe failed" not in model.state_reason  # the loader's own message, not a crash
    assert str(env.root) not in model.state_reason  # names the file, not the data directory
    # Kept, so the user sees why; the blob stays with it.
    assert env.registry.get("broken") == model
    assert files_under(env.root) == [sha(data)]


@arun
async def test_corrupt_torchscript_is_invalid(env: Any) -> None:
    declared = [spec("x", "FP32", [-1])]
    model = await env.registry.upload(stream(meta("broken-ts", fmt=TORCHSCRIPT, inputs=declared), b"\x00garbage" * 100))
    assert model.state == INVALID
    assert model.state_reason and "probe failed" not in model.state_reason


@arun
async def test_torchscript_without_inputs_is_refused_before_any_chunk(env: Any) -> None:
    sent: list[int] = []

    async def requests() -> AsyncIterator[models_pb2.UploadModelRequest]:
        yield meta("ts-bare", fmt=TORCHSCRIPT)
        for i in range(3):
            sent.append(i)
            yield models_pb2.UploadModelRequest(chunk=b"x" * CHUNK)

    with pytest.raises(InvalidArgument, match=r"metadata\.inputs is required for a TorchScript model.*--input x:FP32"):
        await env.registry.upload(requests())
    assert sent == [] and files_under(env.root) == []
    with pytest.raises(NotFound):
        env.registry.get("ts-bare")


# ---- versions -----------------------------------------------------------------
@arun
async def test_versions_count_up_and_are_never_reused(env: Any) -> None:
    reg = env.registry
    data = onnx_model()
    versions = [(await reg.upload(stream(meta("m", new_version=True), data))).version for _ in range(3)]
    assert versions == [1, 2, 3]
    assert [m.version for m in reg.list("m")] == [1, 2, 3]
    assert reg.get("m").version == 3
    assert (await reg.upload(stream(meta("m", version=7), data))).version == 7
    assert (await reg.upload(stream(meta("m", new_version=True), data))).version == 8
    reg.delete("m", 8)
    assert (await reg.upload(stream(meta("m", new_version=True), data))).version == 9
    # One blob for all of them: content addressed.
    assert files_under(env.root) == [sha(data)]


@arun
async def test_concurrent_uploads_get_distinct_versions(env: Any) -> None:
    data = onnx_model()
    models = await asyncio.gather(*(env.registry.upload(stream(meta("m", new_version=True), data)) for _ in range(3)))
    assert sorted(m.version for m in models) == [1, 2, 3]
    assert files_under(env.root) == [sha(data)]


@arun
async def test_the_same_bytes_again_answer_with_the_existing_version(env: Any) -> None:
    reg = env.registry
    data = onnx_model()
    first = await reg.upload(stream(meta("m"), data))
    again = await reg.upload(stream(meta("m"), data))  # no sha256 declared: found after the bytes
    assert (first.version, again.version, again.created_at) == (1, 1, first.created_at)

    async def only_metadata() -> AsyncIterator[models_pb2.UploadModelRequest]:
        yield meta("m", sha256=sha(data))
        raise AssertionError("a chunk was read although the declared sha256 is already version 1")

    assert (await reg.upload(only_metadata())).version == 1
    assert (await reg.upload(stream(meta("m", new_version=True), data))).version == 2
    assert (await reg.upload(stream(meta("m"), onnx_model(seed=3)))).version == 3  # other bytes
    assert (await reg.upload(stream(meta("other"), data))).version == 1  # another model
    assert [m.version for m in reg.list("m")] == [1, 2, 3]
    concurrent = await asyncio.gather(*(reg.upload(stream(meta("n"), data)) for _ in range(3)))
    assert [m.version for m in concurrent] == [1, 1, 1] and [m.version for m in reg.list("n")] == [1]


@arun
async def test_explicit_duplicate_version_already_exists(env: Any) -> None:
    await env.registry.upload(stream(meta("m", version=2), onnx_model()))
    other = onnx_model(seed=1)
    with pytest.raises(AlreadyExists, match="model m v2 already exists"):
        await env.registry.upload(stream(meta("m", version=2), other))
    assert [m.version for m in env.registry.list()] == [2]
    assert files_under(env.root) == [sha(onnx_model())]


# ---- refused uploads leave nothing --------------------------------------------
@arun
async def test_first_message_must_be_metadata(env: Any) -> None:
    with pytest.raises(InvalidArgument, match="the first UploadModelRequest must carry metadata"):
        await env.registry.upload(stream(None, b"abc"))
    with pytest.raises(InvalidArgument, match="the first UploadModelRequest must carry metadata"):
        await env.registry.upload(stream(None, b""))

    async def two_metadata() -> AsyncIterator[models_pb2.UploadModelRequest]:
        yield meta("m")
        yield models_pb2.UploadModelRequest(chunk=b"x" * 10)
        yield meta("m")

    with pytest.raises(InvalidArgument, match="#3 carries metadata"):
        await env.registry.upload(two_metadata())
    assert_nothing_kept(env)


@pytest.mark.parametrize("bad", ["Bad", "", "-x", "a" * 65, "a/b"])
@arun
async def test_bad_model_id(env: Any, bad: str) -> None:
    with pytest.raises(InvalidArgument, match="model_id"):
        await env.registry.upload(stream(meta(bad), b"abc"))
    assert_nothing_kept(env)


@arun
async def test_unspecified_format_is_refused(env: Any) -> None:
    with pytest.raises(InvalidArgument, match="format MODEL_FORMAT_UNSPECIFIED.*MODEL_FORMAT_ONNX.*MODEL_FORMAT_TORCHSCRIPT"):
        await env.registry.upload(stream(meta("m", fmt=common_pb2.MODEL_FORMAT_UNSPECIFIED), b"abc"))
    assert_nothing_kept(env)


@arun
async def test_bad_metadata_fields(env: Any) -> None:
    reg = env.registry
    with pytest.raises(InvalidArgument, match="version must be >= 0"):
        await reg.upload(stream(meta("m", version=-1), b"abc"))
    with pytest.raises(InvalidArgument, match="sha256 'xyz' is not"):
        await reg.upload(stream(meta("m", sha256="xyz"), b"abc"))
    with pytest.raises(InvalidArgument, match=r"metadata.inputs\[0\].datatype 'FLOAT'"):
        await reg.upload(stream(meta("m", inputs=[spec("x", "FLOAT", [1])]), b"abc"))
    with pytest.raises(InvalidArgument, match="carried no bytes"):
        await reg.upload(stream(meta("m"), b""))
    assert_nothing_kept(env)


@arun
async def test_sha256_mismatch_leaves_no_blob_and_no_record(env: Any) -> None:
    data = onnx_model()
    wrong = "0" * 64
    with pytest.raises(InvalidArgument, match=f"sha256 mismatch: expected {wrong}, got {sha(data)}"):
        await env.registry.upload(stream(meta("m", sha256=wrong), data))
    assert_nothing_kept(env)


@arun
async def test_total_bytes_mismatch(env: Any) -> None:
    data = onnx_model()
    with pytest.raises(InvalidArgument, match=f"declared {len(data) + 1} bytes, {len(data)} were received"):
        await env.registry.upload(stream(meta("m", total_bytes=len(data) + 1), data))
    assert_nothing_kept(env)


@arun
async def test_max_model_bytes_stops_reading(env: Any) -> None:
    reg = env.make(max_model_bytes=100_000)
    sent = 0

    async def endless() -> AsyncIterator[models_pb2.UploadModelRequest]:
        nonlocal sent
        yield meta("m")
        while True:
            sent += 1
            yield models_pb2.UploadModelRequest(chunk=b"z" * 30_000)

    with pytest.raises(ResourceExhausted, match="limit of 100000 bytes"):
        await reg.upload(endless())
    assert sent == 4  # the fourth chunk crossed the limit; nothing more was read
    with pytest.raises(ResourceExhausted, match="total_bytes 100001 exceeds the model size limit of 100000 bytes"):
        await reg.upload(stream(meta("m", total_bytes=100_001), b"abc"))
    # Exactly at the limit is accepted.
    model = await reg.upload(stream(meta("m"), b"q" * 100_000))
    assert model.model_bytes == 100_000 and model.state == INVALID
    env.registry.delete("m")
    assert_nothing_kept(env)


@arun
async def test_iterator_raising_mid_stream_leaves_nothing(env: Any) -> None:
    class ClientGone(Exception):
        pass

    async def broken() -> AsyncIterator[models_pb2.UploadModelRequest]:
        yield meta("m")
        for _ in range(40):  # past the 1 MiB buffered by the writer
            yield models_pb2.UploadModelRequest(chunk=os.urandom(CHUNK))
        raise ClientGone()

    with pytest.raises(ClientGone):
        await env.registry.upload(broken())
    assert_nothing_kept(env)


@arun
async def test_cancelled_while_receiving_leaves_nothing(env: Any) -> None:
    stalled = asyncio.Event()

    async def stalls() -> AsyncIterator[models_pb2.UploadModelRequest]:
        yield meta("m")
        for _ in range(20):
            yield models_pb2.UploadModelRequest(chunk=os.urandom(CHUNK))
        stalled.set()
        await asyncio.Event().wait()  # the client never sends the rest
        yield models_pb2.UploadModelRequest(chunk=b"never")

    task = asyncio.create_task(env.registry.upload(stalls()))
    await stalled.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_nothing_kept(env)


# ---- probe outcomes (stand-in interpreter) ------------------------------------
@arun
async def test_probe_timeout_is_invalid_and_the_probe_is_killed(env: Any, tmp_path: Path) -> None:
    pidfile = tmp_path / "probe.pid"
    reg = env.make(python=fake_python(tmp_path, f"echo $$ > {pidfile}; exec sleep 60"), probe_timeout_s=1.0)
    model = await reg.upload(stream(meta("slow"), b"abc"))
    assert model.state == INVALID
    assert "did not load within 1 s" in model.state_reason
    assert not _alive(int(pidfile.read_text()))


@arun
async def test_probe_crash_is_invalid_with_its_stderr(env: Any, tmp_path: Path) -> None:
    reg = env.make(python=fake_python(tmp_path, "echo 'Segmentation fault in loader' >&2; exit 139"))
    model = await reg.upload(stream(meta("crash"), b"abc"))
    assert model.state == INVALID
    assert "exit code 139" in model.state_reason
    assert "Segmentation fault in loader" in model.state_reason


@arun
async def test_probe_receives_declared_specs(env: Any, tmp_path: Path) -> None:
    argv_file = tmp_path / "argv"
    body = (
        f'for a in "$@"; do echo "$a"; done > {argv_file}\n'
        'echo \'{"ok": true, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}], '
        '"outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]}\''
    )
    reg = env.make(python=fake_python(tmp_path, body))
    declared = [spec("x", "FP32", [-1, 3])]
    model = await reg.upload(stream(meta("ts", fmt=TORCHSCRIPT, inputs=declared), b"abc"))
    assert model.state == NORMAL
    assert list(model.outputs) == [spec("y", "FP32", [-1, 3])]
    argv = argv_file.read_text().splitlines()
    assert argv[:4] == ["-m", "node_agent.runtime.probe", "--format", "torchscript"]
    assert argv[4] == str(env.blobs.path(sha(b"abc")))
    assert argv[5:] == ["--inputs-json", '[{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]']


@arun
async def test_cancelled_during_probe_leaves_nothing(env: Any, tmp_path: Path) -> None:
    pidfile = tmp_path / "probe.pid"
    reg = env.make(python=fake_python(tmp_path, f"echo $$ > {pidfile}; exec sleep 60"))
    task = asyncio.create_task(reg.upload(stream(meta("m"), b"abc")))
    while not pidfile.exists() or not pidfile.read_text().strip():
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_nothing_kept(env)
    assert not _alive(int(pidfile.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie not yet reaped by its parent still answers signal 0.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ---- delete -------------------------------------------------------------------
@arun
async def test_delete_in_use_is_refused(env: Any) -> None:
    reg = env.registry
    for _ in range(2):
        await reg.upload(stream(meta("m", new_version=True), onnx_model()))
    env.used.add(("m", 2))
    with pytest.raises(FailedPrecondition, match="model m v2 is used by a deployment"):
        reg.delete("m", 2)
    with pytest.raises(FailedPrecondition, match="model m v2 is used by a deployment"):
        reg.delete("m")  # all or nothing
    assert [m.version for m in reg.list("m")] == [1, 2]
    assert [m.version for m in reg.delete("m", 1)] == [1]
    env.used.clear()
    assert [m.version for m in reg.delete("m")] == [2]
    assert_nothing_kept(env)
    with pytest.raises(NotFound, match="model m not found"):
        reg.delete("m")
    with pytest.raises(NotFound, match="model m v5 not found"):
        reg.delete("m", 5)


@arun
async def test_delete_removes_the_blob_only_when_unreferenced(env: Any) -> None:
    reg = env.registry
    data, other = onnx_model(), onnx_model(seed=2)
    await reg.upload(stream(meta("a"), data))
    await reg.upload(stream(meta("b"), data))
    await reg.upload(stream(meta("c"), other))
    assert files_under(env.root) == sorted([sha(data), sha(other)])
    reg.delete("a")
    assert files_under(env.root) == sorted([sha(data), sha(other)])
    reg.delete("b", 1)
    assert files_under(env.root) == [sha(other)]
    assert [m.model_id for m in reg.list()] == ["c"]


def test_orphan_blobs_are_removed_on_open(env: Any) -> None:
    writer = env.blobs.writer()
    writer.write(b"left behind by a crash between commit and record")
    orphan = writer.commit()
    assert env.blobs.exists(orphan)
    env.make()
    assert not env.blobs.exists(orphan)


# ---- get / list / resolve / download ------------------------------------------
@arun
async def test_get_and_list(env: Any) -> None:
    reg = env.registry
    with pytest.raises(NotFound, match="model m not found"):
        reg.get("m")
    await reg.upload(stream(meta("m"), onnx_model()))
    await reg.upload(stream(meta("a"), onnx_model()))
    with pytest.raises(NotFound, match="model m v3 not found"):
        reg.get("m", 3)
    with pytest.raises(InvalidArgument, match="version must be >= 0"):
        reg.get("m", -1)
    assert [(m.model_id, m.version) for m in reg.list()] == [("a", 1), ("m", 1)]
    assert [(m.model_id, m.version) for m in reg.list("m")] == [("m", 1)]
    assert reg.list("zzz") == []


@arun
async def test_resolve_deployable(env: Any) -> None:
    reg = env.registry
    await reg.upload(stream(meta("m"), onnx_model()))
    await reg.upload(stream(meta("m"), b"garbage"))
    assert reg.get("m", 2).state == INVALID
    assert reg.resolve_deployable("m").version == 1
    assert reg.resolve_deployable("m", 1).version == 1
    with pytest.raises(FailedPrecondition, match=r"model m v2 is INVALID: .+; only NORMAL models deploy"):
        reg.resolve_deployable("m", 2)
    with pytest.raises(NotFound, match="model m v9 not found"):
        reg.resolve_deployable("m", 9)
    with pytest.raises(NotFound, match="model nope not found"):
        reg.resolve_deployable("nope")
    await reg.upload(stream(meta("bad"), b"garbage"))
    with pytest.raises(FailedPrecondition, match="model bad has no NORMAL version"):
        reg.resolve_deployable("bad")


@arun
async def test_download_reassembles_the_exact_bytes(env: Any) -> None:
    data = onnx_model()
    await env.registry.upload(stream(meta("m"), data))
    parts = [r async for r in env.registry.download("m", chunk_bytes=10_000)]
    assert b"".join(p.chunk for p in parts) == data
    assert [p.offset for p in parts] == list(range(0, len(data), 10_000))
    assert all(p.total_bytes == len(data) and p.sha256 == sha(data) for p in parts)
    assert max(len(p.chunk) for p in parts) == 10_000
    default = [r async for r in env.registry.download("m", 1)]
    assert len(default) == 1 and default[0].chunk == data
    with pytest.raises(NotFound, match="model m v2 not found"):
        [r async for r in env.registry.download("m", 2)]


# ---- large upload -------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@arun
async def test_large_upload_has_bounded_memory(env: Any) -> None:
    block = os.urandom(1 << 20)
    count = 200
    peak = 0
    before = _rss_bytes()

    async def big() -> AsyncIterator[models_pb2.UploadModelRequest]:
        nonlocal peak
        yield meta("big", total_bytes=count * len(block))
        for _ in range(count):
            yield models_pb2.UploadModelRequest(chunk=block)
            peak = max(peak, _rss_bytes())

    expected = hashlib.sha256()
    for _ in range(count):
        expected.update(block)
    model = await env.registry.upload(big())
    peak = max(peak, _rss_bytes())
    assert model.model_bytes == count * len(block)
    assert model.sha256 == expected.hexdigest()
    assert model.state == INVALID  # random bytes; it need not load
    growth = peak - before
    assert growth < 32 << 20, f"RSS grew by {growth >> 20} MiB for a {model.model_bytes >> 20} MiB upload"
    assert env.blobs.size(model.sha256) == model.model_bytes
