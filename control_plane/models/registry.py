"""The model registry: models by (model_id, version), and the one door to them.

Transport-free: the servicer hands in the protobuf request messages (and, for
an upload, the async iterator of UploadModelRequest) and gets protobuf models
back; failures are the domain errors of control_plane.errors.

ModelRegistry owns reading (get, list, resolve_deployable: only NORMAL
models deploy), downloading a model's file, and deleting versions. It
composes the rest of the room: the upload pipeline (models/upload.py), the
probe subprocess that validates an upload (models/probe.py), which blobs
are kept (models/references.py) and the files themselves (models/blobs.py).

Invariants kept here: a version used by a deployment is never deleted, and a
delete is all or nothing; a blob is removed once no record references it
and no upload in flight holds it.

The registry runs on one event loop and is not thread-safe. Probes run at
most ``probe_concurrency`` at a time: each imports onnxruntime or torch.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import sys
from collections.abc import AsyncIterator, Callable

from control_plane import paging
from control_plane.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from control_plane.ids import check_id
from control_plane.models.blobs import BlobStore
from control_plane.models.probe import Prober
from control_plane.models.references import BlobReferences
from control_plane.models.upload import Uploads, label, state_name
from control_plane.store.base import Store
from modelfleet.v1 import common_pb2, models_pb2

__all__ = ["ModelRegistry"]

logger = logging.getLogger(__name__)


class ModelRegistry:
    """Models by (model_id, version), their blobs, and the upload validation."""

    def __init__(
        self,
        *,
        store: Store,
        blobs: BlobStore,
        in_use: Callable[[str, int], bool],
        max_model_bytes: int = 4 << 30,
        probe_timeout_s: float = 120.0,
        python: str = sys.executable,
        probe_concurrency: int = 2,
    ) -> None:
        """
        Args:
            store: durable model records.
            blobs: the model files, by sha256.
            in_use: in_use(model_id, version) is True while a deployment uses
                that version; such a version cannot be deleted.
            max_model_bytes: the largest accepted upload.
            probe_timeout_s: how long the probe may take to load a model.
            python: the interpreter that runs the probe.
            probe_concurrency: how many probes may run at once.
        """
        if max_model_bytes <= 0:
            raise ValueError("max_model_bytes must be positive")
        self._store = store
        self._blobs = blobs
        self._in_use = in_use
        self._references = BlobReferences(store=store, blobs=blobs)
        self._uploads = Uploads(
            store=store,
            blobs=blobs,
            references=self._references,
            prober=Prober(python=python, timeout_s=probe_timeout_s, concurrency=probe_concurrency),
            max_model_bytes=max_model_bytes,
        )
        self.remove_orphan_blobs()

    # ---- upload -------------------------------------------------------------
    async def upload(self, requests: AsyncIterator[models_pb2.UploadModelRequest]) -> models_pb2.Model:
        """Receive one model: metadata first, then chunks. Returns the stored Model.

        The returned model is durable (blob and record). A model that fails
        to load is stored as INVALID with the loader's reason.

        Raises:
            InvalidArgument: bad or misplaced metadata, empty upload, sha256
                or total_bytes mismatch, a file the probe refuses.
            AlreadyExists: the explicit version exists.
            ResourceExhausted: the stream is larger than max_model_bytes.
            FailedPrecondition: the model has used up its version numbers.
            Whatever the iterator raises (a cancelled client): nothing is kept.
        """
        return await self._uploads.upload(requests)

    # ---- reading ------------------------------------------------------------
    def get(self, model_id: str, version: int = 0) -> models_pb2.Model:
        """One version (0 = the newest). NotFound names the id and version."""
        check_id("model_id", model_id)
        _check_version(version)
        model = self._store.get_model(model_id, version)
        if model is None:
            raise NotFound(f"{label(model_id, version)} not found")
        return model

    def resolve_deployable(self, model_id: str, version: int = 0) -> models_pb2.Model:
        """The version a deployment runs: the named one, or (0) the newest NORMAL one.

        Raises:
            NotFound: no such model or version.
            FailedPrecondition: the version is not NORMAL (or, for 0, none is).
        """
        check_id("model_id", model_id)
        _check_version(version)
        if version:
            model = self.get(model_id, version)
            if model.state != common_pb2.MODEL_STATE_NORMAL:
                raise FailedPrecondition(
                    f"model {model_id} v{version} is {state_name(model.state)}: "
                    f"{model.state_reason or 'no reason recorded'}; only NORMAL models deploy"
                )
            return model
        models = self._store.list_models(model_id)
        if not models:
            raise NotFound(f"model {model_id} not found")
        for model in sorted(models, key=lambda m: m.version, reverse=True):
            if model.state == common_pb2.MODEL_STATE_NORMAL:
                return model
        newest = max(models, key=lambda m: m.version)
        raise FailedPrecondition(
            f"model {model_id} has no NORMAL version (v{newest.version} is {state_name(newest.state)}: "
            f"{newest.state_reason or 'no reason recorded'}); only NORMAL models deploy"
        )

    async def download(
        self, model_id: str, version: int = 0, *, chunk_bytes: int = 1 << 20
    ) -> AsyncIterator[models_pb2.DownloadModelResponse]:
        """Stream the model's file (0 = the newest version) in chunks.

        Every message carries its offset, the total size and the sha256. The
        lookup runs on the first iteration (this is an async generator).

        Raises:
            NotFound: no such model or version.
            DataLoss: the blob is missing or changed size (should never happen).
        """
        if chunk_bytes <= 0:
            raise InvalidArgument(f"chunk_bytes must be positive, got {chunk_bytes}")
        model = self.get(model_id, version)
        try:
            handle = self._blobs.open(model.sha256)
        except FileNotFoundError:
            raise DataLoss(
                f"the file of model {model.model_id} v{model.version} (sha256 {model.sha256}) is missing"
            ) from None
        with handle:
            offset = 0
            while True:
                chunk = await asyncio.to_thread(handle.read, chunk_bytes)
                if not chunk:
                    break
                yield models_pb2.DownloadModelResponse(
                    chunk=chunk, offset=offset, total_bytes=model.model_bytes, sha256=model.sha256
                )
                offset += len(chunk)
        if offset != model.model_bytes:
            raise DataLoss(
                f"the file of model {model.model_id} v{model.version} holds {offset} bytes; "
                f"{model.model_bytes} were uploaded"
            )

    # ---- deleting -----------------------------------------------------------
    def delete(self, model_id: str, version: int = 0) -> builtins.list[models_pb2.Model]:
        """Delete one version, or (0) every version. Returns the deleted models.

        All or nothing: if any targeted version is used by a deployment,
        nothing is deleted. A blob is removed once no record references it.

        Raises:
            NotFound: no such model or version.
            FailedPrecondition: "model m vN is used by a deployment".
        """
        check_id("model_id", model_id)
        _check_version(version)
        if version:
            targets = [self.get(model_id, version)]
        else:
            targets = self._store.list_models(model_id)
            if not targets:
                raise NotFound(f"model {model_id} not found")
        for model in targets:
            if self._in_use(model_id, model.version):
                raise FailedPrecondition(f"model {model_id} v{model.version} is used by a deployment")
        with self._store.transaction():
            for model in targets:
                self._store.delete_model(model_id, model.version)
        for sha256 in sorted({m.sha256 for m in targets}):
            self._references.remove_if_unreferenced(sha256)
        logger.info("deleted model %s versions %s", model_id, [m.version for m in targets])
        return targets

    def remove_orphan_blobs(self) -> builtins.list[str]:
        """Remove blobs that no record references and no upload holds.

        Such blobs are left when the control plane dies between a blob's
        commit and its record. Runs when the registry opens. Returns their sha256s.
        """
        return self._references.remove_orphans()

    # Defined last: inside the class body, `list` names this method from here on.
    def list(self, model_id: str = "") -> builtins.list[models_pb2.Model]:
        """Every model (or every version of model_id), by model_id then version."""
        if model_id:
            check_id("model_id", model_id)
        return self._store.list_models(model_id)

    def list_page(self, req: models_pb2.ListModelsRequest) -> models_pb2.ListModelsResponse:
        """One page of list(req.model_id), ordered by model_id then version."""
        query = paging.query_fingerprint("models", req.model_id)
        page = paging.paginate(self.list(req.model_id), key=lambda m: (m.model_id, m.version), page=req.page, query=query)
        return models_pb2.ListModelsResponse(models=page.items, next_page_token=page.next_page_token)


# ---- helpers ----------------------------------------------------------------
def _check_version(version: int) -> None:
    if version < 0:
        raise InvalidArgument(f"version must be >= 0 (0 = the newest), got {version}")
