"""Content-addressed model files: ``root/<sha256>``, written atomically.

The blob store owns the bytes of every uploaded model; the model records in
the Store only name them by sha256. A blob is created in three steps:

1. ``BlobStore.writer()`` opens a fresh temp file in ``root/tmp``;
2. ``BlobWriter.write()`` appends chunks, hashing them (sha256) and counting
   their size as they pass;
3. ``BlobWriter.commit()`` fsyncs the file, renames it atomically to
   ``root/<sha256>`` and fsyncs the directory. If that blob already exists
   with the same size the temp file is dropped instead (dedupe).

``BlobWriter.discard()`` (also called by the context manager when its block
raises) removes the temp file, so no partial blob is ever visible under its
name: a reader sees the whole file or nothing. Temp files left by a crash are
removed when a BlobStore is opened, so open exactly one BlobStore per root.

Concurrency: the control plane drives a writer from its event loop. The async
methods (``awrite``, ``acommit``) batch chunks and hand the disk work (write,
hash, fsync, rename) to a worker thread so the loop never blocks on the disk;
the sync methods do the same work inline. One ``threading.Lock`` per writer
serializes that work with ``discard()``: a task cancelled while its thread is
still writing discards only after the thread is done, so the thread never
touches a closed descriptor and a rename never lands after the discard.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

__all__ = ["BlobStore", "BlobWriter", "is_sha256"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The async writer hands chunks to its thread once this many bytes are buffered.
_FLUSH_BYTES = 1 << 20


def is_sha256(value: str) -> bool:
    """True if value is a lowercase hex sha256 digest (64 characters)."""
    return bool(_SHA256.match(value))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blobs under ``root``; temp files under ``root/tmp`` (cleared on open)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        self._clean_tmp()

    def _clean_tmp(self) -> None:
        """Remove temp files left by a crash (they were never committed)."""
        removed = False
        for entry in self.tmp_dir.iterdir():
            if entry.is_file() or entry.is_symlink():
                entry.unlink(missing_ok=True)
                removed = True
        if removed:
            _fsync_dir(self.tmp_dir)

    # ---- reading ------------------------------------------------------------
    def path(self, sha256: str) -> Path:
        """The path of blob sha256 (which may not exist). ValueError if sha256 is malformed."""
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return self.root / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        """Size in bytes. FileNotFoundError if absent."""
        return self.path(sha256).stat().st_size

    def open(self, sha256: str) -> BinaryIO:
        """Open the blob for reading (binary). FileNotFoundError if absent.

        An open file keeps its bytes readable even if the blob is deleted meanwhile.
        """
        return open(self.path(sha256), "rb")  # noqa: SIM115 - the caller closes it

    def shas(self) -> list[str]:
        """Every committed blob's sha256, sorted."""
        return sorted(p.name for p in self.root.iterdir() if is_sha256(p.name) and p.is_file())

    # ---- writing ------------------------------------------------------------
    def writer(self) -> BlobWriter:
        """A new temp file to fill; commit() or discard() it (or use ``with``)."""
        return BlobWriter(self)

    def delete(self, sha256: str) -> bool:
        """Remove blob sha256 durably. True if it existed."""
        path = self.path(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.root)
        return True


class BlobWriter:
    """One temp file being filled. States: open → committed | discarded.

    ``sha256``/``size`` describe the bytes written so far (all of them once
    the batched async writes were flushed by ``acommit``/``flush``).
    """

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._lock = threading.Lock()  # guards the file, the hash and the state
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=store.tmp_dir)
        self._file: BinaryIO | None = os.fdopen(fd, "wb", buffering=0)
        self.tmp_path = Path(name)
        self._hash = hashlib.sha256()
        self._written = 0  # bytes written to the file and hashed
        self._pending: list[bytes] = []  # async chunks not yet handed to the thread
        self._pending_bytes = 0
        self._digest: str | None = None
        self.committed = False
        self.discarded = False

    # ---- sizes --------------------------------------------------------------
    @property
    def size(self) -> int:
        """Bytes received so far, buffered ones included."""
        return self._written + self._pending_bytes

    @property
    def sha256(self) -> str:
        """Digest of the written bytes; only final after flush()/commit()."""
        if self._digest is not None:
            return self._digest
        return self._hash.hexdigest()

    # ---- sync API -----------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Append data (hash and size follow)."""
        self._write_chunks([data])

    def commit(self) -> str:
        """fsync, rename to root/<sha256> (or dedupe), fsync the dir. Returns sha256."""
        chunks, self._pending, self._pending_bytes = self._pending, [], 0
        return self._commit(chunks)

    def discard(self) -> None:
        """Drop the temp file (idempotent; a no-op after commit).

        Waits for a write or commit running in a worker thread to finish first.
        """
        with self._lock:
            if self.committed or self.discarded:
                return
            self.discarded = True
            self._pending, self._pending_bytes = [], 0
            self._close()
            self.tmp_path.unlink(missing_ok=True)

    # ---- async API ----------------------------------------------------------
    async def awrite(self, data: bytes) -> None:
        """Append data; buffered up to ~1 MiB, then written and hashed in a thread."""
        if self.committed or self.discarded:
            raise ValueError("write to a finished blob writer")
        if not data:
            return
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)
        if self._pending_bytes >= _FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Write every buffered chunk (in a thread)."""
        if not self._pending:
            return
        chunks, self._pending, self._pending_bytes = self._pending, [], 0
        await asyncio.to_thread(self._write_chunks, chunks)

    async def acommit(self) -> str:
        """commit() with its disk work (write, fsync, rename) in a thread."""
        chunks, self._pending, self._pending_bytes = self._pending, [], 0
        return await asyncio.to_thread(self._commit, chunks)

    # ---- context manager ----------------------------------------------------
    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    # ---- thread side (every method below runs under self._lock) -------------
    def _write_chunks(self, chunks: list[bytes]) -> None:
        with self._lock:
            if self._file is None:
                raise ValueError("write to a finished blob writer")
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = self._file.write(view)
                    view = view[n:]
                self._hash.update(chunk)
                self._written += len(chunk)

    def _commit(self, chunks: list[bytes]) -> str:
        self._write_chunks(chunks)
        with self._lock:
            if self._file is None:
                raise ValueError("commit of a finished blob writer")
            digest = self._hash.hexdigest()
            os.fsync(self._file.fileno())
            self._close()
            target = self._store.root / digest
            try:
                existing = target.stat().st_size
            except FileNotFoundError:
                existing = -1
            if existing == self._written:
                # Same content already stored: content addressing makes it ours.
                self.tmp_path.unlink(missing_ok=True)
            else:
                os.replace(self.tmp_path, target)
                _fsync_dir(self._store.root)
            self._digest = digest
            self.committed = True
            return digest

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

