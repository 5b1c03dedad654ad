"""BlobStore: content-addressed files, atomic commit, dedupe, temp cleanup."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from control_plane.models.blobs import BlobStore, is_sha256


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_blobstore_cleans_stale_temp_files_on_open(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    blobs = BlobStore(root)
    writer = blobs.writer()
    writer.write(b"half an upload")
    assert writer.tmp_path.parent == root / "tmp" and writer.tmp_path.exists()
    (root / "tmp" / "junk").write_bytes(b"x")
    BlobStore(root)  # a restart
    assert files_under(root) == []


def test_blobstore_commit_dedupe_discard(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "b")
    with blobs.writer() as w:
        w.write(b"hello ")
        w.write(b"world")
        digest = w.commit()
    assert digest == sha(b"hello world") and is_sha256(digest)
    assert blobs.exists(digest) and blobs.size(digest) == 11
    with blobs.open(digest) as f:
        assert f.read() == b"hello world"
    with blobs.writer() as w2:
        w2.write(b"hello world")
        assert w2.commit() == digest
    assert files_under(tmp_path / "b") == [digest]
    with pytest.raises(RuntimeError), blobs.writer() as w3:
        w3.write(b"partial")
        raise RuntimeError
    assert not w3.tmp_path.exists()
    assert blobs.shas() == [digest]
    assert blobs.delete(digest) and not blobs.delete(digest)
    assert files_under(tmp_path / "b") == []
    with pytest.raises(ValueError):
        blobs.path("../etc/passwd")


def test_blobwriter_async_api(tmp_path: Path) -> None:
    asyncio.run(_async_api(tmp_path))


async def _async_api(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "b")
    w = blobs.writer()
    data = os.urandom(3 << 20)
    for i in range(0, len(data), 100_000):
        await w.awrite(data[i : i + 100_000])
        assert w.size == min(i + 100_000, len(data))
    digest = await w.acommit()
    assert digest == sha(data) and blobs.path(digest).read_bytes() == data
    assert files_under(tmp_path / "b") == [digest]


def test_discard_after_commit_keeps_the_blob_and_finished_writers_refuse_writes(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "b")
    w = blobs.writer()
    w.write(b"kept")
    digest = w.commit()
    w.discard()
    assert blobs.exists(digest) and w.committed and not w.discarded
    with pytest.raises(ValueError):
        w.write(b"more")
    d = blobs.writer()
    d.discard()
    assert d.discarded and not d.tmp_path.exists()
    with pytest.raises(ValueError):
        asyncio.run(d.awrite(b"late"))
