"""Which model blobs are kept: those a record references or an upload holds.

Blobs are shared by content (two versions with the same bytes name one
``blobs/<sha256>``), so a blob is deleted only when no model record names
its sha256 and no upload in flight holds it. An upload holds its blob from
before the blob's commit until its record is written (or the upload fails),
so a concurrent delete of another model with the same content keeps the
file. A control plane that dies between a blob's commit and its record
leaves an orphan; `remove_orphans` runs when the registry opens.

Runs on the control plane's event loop, like the registry; not thread-safe.
"""

from __future__ import annotations

import collections
import logging

from control_plane.models.blobs import BlobStore
from control_plane.store.base import Store

__all__ = ["BlobReferences"]

logger = logging.getLogger(__name__)


class BlobReferences:
    """The holds of uploads in flight, and the removal of unreferenced blobs."""

    def __init__(self, *, store: Store, blobs: BlobStore) -> None:
        self._store = store
        self._blobs = blobs
        # sha256 -> number of uploads in flight that committed (or are
        # committing) that blob and have not written their record yet.
        self._holds: collections.Counter[str] = collections.Counter()

    def hold(self, sha256: str) -> None:
        """An upload is about to commit this blob; keep it until `release`."""
        self._holds[sha256] += 1

    def release(self, sha256: str, *, collect: bool) -> None:
        """End one hold; with `collect`, remove the blob unless it is still referenced."""
        self._holds[sha256] -= 1
        if self._holds[sha256] <= 0:
            del self._holds[sha256]
        if collect:
            self.remove_if_unreferenced(sha256)

    def remove_if_unreferenced(self, sha256: str) -> None:
        """Delete the blob if no record references it and no upload holds it."""
        if sha256 in self._holds:
            return
        if any(m.sha256 == sha256 for m in self._store.list_models()):
            return
        self._delete(sha256)

    def remove_orphans(self) -> list[str]:
        """Remove every blob that no record references and no upload holds; their sha256s."""
        referenced = {m.sha256 for m in self._store.list_models()}
        removed = []
        for sha256 in self._blobs.shas():
            if sha256 not in referenced and sha256 not in self._holds:
                if self._delete(sha256):
                    removed.append(sha256)
        if removed:
            logger.info("removed %d unreferenced model blob(s)", len(removed))
        return removed

    def _delete(self, sha256: str) -> bool:
        try:
            return self._blobs.delete(sha256)
        except OSError:
            # The record is gone already; the next remove_orphans retries.
            logger.exception("cannot remove model blob %s", sha256)
            return False
