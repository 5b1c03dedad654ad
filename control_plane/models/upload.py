"""The upload pipeline: one UploadModel stream in, one durable Model record out.

One coroutine per upload, on the control plane's loop:

    metadata checks → chunks streamed into a BlobWriter temp file (sha256 and
    size computed on the way, the size limit enforced per chunk) → sha256 /
    total_bytes checks → atomic commit to blobs/<sha256> → probe subprocess
    (control_plane.models.probe) on the committed file → NORMAL with the
    probed tensor specs, or INVALID with the loader's reason, or refused (a
    zip bomb, ONNX external data: INVALID_ARGUMENT and nothing is kept) →
    one store write (durable) → the Model is returned.

Invariants:
- No partial blob: a failed, refused or cancelled upload discards its temp
  file; a blob committed for an upload that then fails is removed again
  unless a record references it (control_plane.models.references).
- The record is written after its blob is durable, so every record's sha256
  names a whole file.
- A version number is assigned (0 = max_model_version + 1) in the same
  synchronous step that writes the record, so two concurrent uploads never
  get the same version; the store never reuses a deleted version.
- Models that fail validation are kept as INVALID (with the reason) so the
  user sees why.
- Uploading the same bytes (sha256), format and declared specs again with
  version 0 answers with the existing version, before any chunk is read
  when the metadata declares the sha256; `new_version` records a new one.

Not thread-safe: every upload runs on the one event loop.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from control_plane.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted
from control_plane.ids import check_id
from control_plane.models.blobs import BlobStore, BlobWriter, is_sha256
from control_plane.models.probe import FORMATS, Prober, ProbeResult, trim
from control_plane.models.references import BlobReferences
from control_plane.store.base import Store
from modelfleet.v1 import common_pb2, models_pb2

__all__ = ["MAX_VERSION", "V2_DATATYPES", "Uploads", "label", "state_name"]

logger = logging.getLogger(__name__)

V2_DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
     "FP16", "FP32", "FP64", "BYTES"}
)  # fmt: skip
MAX_VERSION = 2**31 - 1  # Model.version is an int32


@dataclasses.dataclass(frozen=True)
class _UploadPlan:
    """The checked metadata of one upload."""

    model_id: str
    version: int  # 0 = next
    format: int
    description: str
    sha256: str  # "" = unchecked
    total_bytes: int  # 0 = unchecked
    inputs: tuple[common_pb2.TensorSpec, ...]
    outputs: tuple[common_pb2.TensorSpec, ...]
    new_version: bool  # record a new version even when the same bytes exist

    def existing(self, store: Store, sha256: str) -> models_pb2.Model | None:
        """The newest version of this model with these bytes, format and declared
        specs: what an upload of the same file answers with, unless a new
        version is asked for (new_version) or the version is given."""
        if self.version or self.new_version or not sha256:
            return None
        for model in sorted(store.list_models(self.model_id), key=lambda m: m.version, reverse=True):
            if model.model_id != self.model_id or model.sha256 != sha256 or model.format != self.format:
                continue
            if self.inputs and list(model.inputs) != list(self.inputs):
                continue
            if self.outputs and list(model.outputs) != list(self.outputs):
                continue
            return model
        return None


def label(model_id: str, version: int) -> str:
    """How messages name a model: "model m v3", or "model m" for version 0."""
    return f"model {model_id} v{version}" if version else f"model {model_id}"


def state_name(state: int) -> str:
    """A ModelState without its prefix ("NORMAL"), or its number if unknown."""
    name = common_pb2.ModelState.Name(state) if state in common_pb2.ModelState.values() else str(state)
    return name.removeprefix("MODEL_STATE_")


class Uploads:
    """Receives, checks, probes and records uploaded models."""

    def __init__(
        self, *, store: Store, blobs: BlobStore, references: BlobReferences, prober: Prober, max_model_bytes: int
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._references = references
        self._prober = prober
        self._max_model_bytes = max_model_bytes

    async def upload(self, requests: AsyncIterator[models_pb2.UploadModelRequest]) -> models_pb2.Model:
        """Receive one model: metadata first, then chunks. Returns the stored Model.

        See ModelRegistry.upload for the errors.
        """
        iterator = aiter(requests)
        plan = self._check_metadata(await _first_metadata(iterator))
        if (same := plan.existing(self._store, plan.sha256)) is not None:
            # The declared sha256 names bytes already recorded: answer before any chunk is read.
            logger.info("upload of model %s: same bytes as v%d, answered with it", plan.model_id, same.version)
            return same
        writer = self._blobs.writer()
        held: str | None = None
        recorded = False
        try:
            await self._receive(iterator, writer, plan)
            sha256 = writer.sha256
            if plan.sha256 and sha256 != plan.sha256:
                raise InvalidArgument(f"sha256 mismatch: expected {plan.sha256}, got {sha256}")
            if (same := plan.existing(self._store, sha256)) is not None:
                writer.discard()
                return same
            # Hold the blob from before its commit until its record exists, so
            # a concurrent delete of another model with this content keeps it.
            held = sha256
            self._references.hold(sha256)
            await writer.acommit()
            probe = await self._prober.probe(
                self._blobs.path(sha256), model_format=plan.format, inputs=plan.inputs, outputs=plan.outputs
            )
            if probe.refused:
                raise InvalidArgument(f"{label(plan.model_id, plan.version)} refused: {probe.error}")
            model = self._record(_new_model(plan, sha256=sha256, size=writer.size, probe=probe), plan)
            recorded = True
        except BaseException:
            writer.discard()  # waits for a write/commit still running in its thread
            raise
        finally:
            if held is not None:
                self._references.release(held, collect=not recorded and writer.committed)
        logger.info(
            "uploaded model %s v%d: %d bytes, sha256 %s, %s %s",
            model.model_id, model.version, model.model_bytes, model.sha256,
            state_name(model.state), model.state_reason[:200],
        )  # fmt: skip
        return model

    def _check_metadata(self, meta: models_pb2.UploadModelMetadata) -> _UploadPlan:
        model_id = check_id("model_id", meta.model_id)
        if meta.version < 0:
            raise InvalidArgument(f"version must be >= 0 (0 = the next version), got {meta.version}")
        if meta.version and self._store.get_model(model_id, meta.version) is not None:
            raise AlreadyExists(f"model {model_id} v{meta.version} already exists")
        if meta.format not in FORMATS:
            known = meta.format in common_pb2.ModelFormat.values()
            name = common_pb2.ModelFormat.Name(meta.format) if known else str(meta.format)
            raise InvalidArgument(f"format {name} is not supported: use MODEL_FORMAT_ONNX or MODEL_FORMAT_TORCHSCRIPT")
        expected = meta.sha256.strip().lower()
        if expected and not is_sha256(expected):
            raise InvalidArgument(f"sha256 {meta.sha256!r} is not a hex sha256 digest (64 hex digits)")
        if meta.total_bytes < 0:
            raise InvalidArgument(f"total_bytes must be >= 0 (0 = unchecked), got {meta.total_bytes}")
        if meta.total_bytes > self._max_model_bytes:
            raise ResourceExhausted(
                f"total_bytes {meta.total_bytes} exceeds the model size limit of {self._max_model_bytes} bytes"
            )
        inputs = _check_specs("inputs", meta.inputs)
        outputs = _check_specs("outputs", meta.outputs)
        if meta.format == common_pb2.MODEL_FORMAT_TORCHSCRIPT and not inputs:
            # A TorchScript file records no datatypes or shapes, so nothing
            # could check requests against it: the caller must say them.
            raise InvalidArgument(
                "metadata.inputs is required for a TorchScript model (the file records no datatypes or shapes): "
                "declare each argument of forward in order, e.g. `modelfleet models upload --input x:FP32:-1,4`"
            )
        return _UploadPlan(
            model_id=model_id,
            version=meta.version,
            format=meta.format,
            description=meta.description,
            sha256=expected,
            total_bytes=meta.total_bytes,
            inputs=inputs,
            outputs=outputs,
            new_version=meta.new_version,
        )

    async def _receive(
        self,
        iterator: AsyncIterator[models_pb2.UploadModelRequest],
        writer: BlobWriter,
        plan: _UploadPlan,
    ) -> None:
        """Stream the chunks into writer; check size limits and total_bytes."""
        index = 1
        async for request in iterator:
            index += 1
            kind = request.WhichOneof("payload")
            if kind != "chunk":
                what = "metadata" if kind == "metadata" else "neither metadata nor a chunk"
                raise InvalidArgument(
                    f"UploadModelRequest #{index} carries {what}; only the first message carries metadata, "
                    "every later one a chunk"
                )
            chunk = request.chunk
            if writer.size + len(chunk) > self._max_model_bytes:
                raise ResourceExhausted(
                    f"the model is larger than the model size limit of {self._max_model_bytes} bytes"
                )
            await writer.awrite(chunk)
        await writer.flush()
        if writer.size == 0:
            raise InvalidArgument(f"the upload of model {plan.model_id} carried no bytes: send the model in chunks")
        if plan.total_bytes and writer.size != plan.total_bytes:
            raise InvalidArgument(
                f"total_bytes mismatch: the metadata declared {plan.total_bytes} bytes, {writer.size} were received"
            )

    def _record(self, model: models_pb2.Model, plan: _UploadPlan) -> models_pb2.Model:
        """Assign the version (if 0) and write the record; no await in here, so a
        concurrent upload of the same bytes either sees this record or is seen.
        Returns the recorded model, or the existing one with the same bytes."""
        if (same := plan.existing(self._store, model.sha256)) is not None:
            return same
        if plan.version:
            if self._store.get_model(model.model_id, model.version) is not None:
                raise AlreadyExists(f"model {model.model_id} v{model.version} already exists")
        else:
            version = self._store.max_model_version(model.model_id) + 1
            if version > MAX_VERSION:
                raise FailedPrecondition(f"model {model.model_id} has used up its version numbers (v{MAX_VERSION})")
            model.version = version
        model.created_at.GetCurrentTime()
        self._store.put_model(model)
        return model


async def _first_metadata(
    iterator: AsyncIterator[models_pb2.UploadModelRequest],
) -> models_pb2.UploadModelMetadata:
    """The metadata the first message must carry."""
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        raise InvalidArgument("the first UploadModelRequest must carry metadata; the stream was empty") from None
    if first.WhichOneof("payload") != "metadata":
        raise InvalidArgument("the first UploadModelRequest must carry metadata")
    return first.metadata


def _new_model(plan: _UploadPlan, *, sha256: str, size: int, probe: ProbeResult) -> models_pb2.Model:
    model = models_pb2.Model(
        model_id=plan.model_id,
        version=plan.version,
        format=plan.format,  # type: ignore[arg-type]
        model_bytes=size,
        sha256=sha256,
        description=plan.description,
    )
    if probe.ok:
        model.state = common_pb2.MODEL_STATE_NORMAL
        model.inputs.extend(probe.inputs)
        model.outputs.extend(probe.outputs)
    else:
        model.state = common_pb2.MODEL_STATE_INVALID
        model.state_reason = trim(probe.error) or "the model could not be loaded"
        # Keep what the user declared, so they see what was checked.
        model.inputs.extend(plan.inputs)
        model.outputs.extend(plan.outputs)
    return model


def _check_specs(field: str, specs: Any) -> tuple[common_pb2.TensorSpec, ...]:
    """Declared tensor specs: named once each, V2 datatypes, dims >= -1."""
    seen: set[str] = set()
    out = []
    for i, spec in enumerate(specs):
        where = f"metadata.{field}[{i}]"
        if not spec.name:
            raise InvalidArgument(f"{where}.name is required")
        if spec.name in seen:
            raise InvalidArgument(f"{where}.name {spec.name!r} is declared twice")
        seen.add(spec.name)
        if spec.datatype not in V2_DATATYPES:
            raise InvalidArgument(
                f"{where}.datatype {spec.datatype!r} is not a V2 datatype: use one of {', '.join(sorted(V2_DATATYPES))}"
            )
        if any(d < -1 for d in spec.shape):
            raise InvalidArgument(f"{where}.shape {list(spec.shape)} is invalid: dimensions are >= 0, or -1 for dynamic")
        copy = common_pb2.TensorSpec()
        copy.CopyFrom(spec)
        out.append(copy)
    return tuple(out)
