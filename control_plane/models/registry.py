"""The model registry: uploads, validation, versions, deletes and downloads.

Transport-free: the servicer hands in the protobuf request messages (and, for
an upload, the async iterator of UploadModelRequest) and gets protobuf models
back; failures are the domain errors of control_plane.errors.

Upload pipeline (one coroutine per upload, on the control plane's loop):

    metadata checks → chunks streamed into a BlobWriter temp file (sha256 and
    size computed on the way, the size limit enforced per chunk) → sha256 /
    total_bytes checks → atomic commit to blobs/<sha256> → probe subprocess
    (``python -m node_agent.runtime.probe``) on the committed file → NORMAL
    with the probed tensor specs, or INVALID with the loader's reason, or
    refused (a zip bomb, ONNX external data: INVALID_ARGUMENT and nothing is
    kept) → one store write (durable) → the Model is returned.

Invariants:
- No partial blob: a failed, refused or cancelled upload discards its temp
  file; a blob committed for an upload that then fails is removed again
  unless a record references it.
- The record is written after its blob is durable, so every record's sha256
  names a whole file. Blobs are shared by content: one is deleted only when
  no record references it and no upload in flight holds it (``_holds``).
- A version number is assigned (0 = max_model_version + 1) in the same
  synchronous step that writes the record, so two concurrent uploads never
  get the same version; the store never reuses a deleted version.
- Models that fail validation are kept as INVALID (with the reason) so the
  user sees why; only NORMAL models deploy (resolve_deployable).

The registry runs on one event loop and is not thread-safe. Probes run at
most ``probe_concurrency`` at a time: each imports onnxruntime or torch.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from control_plane.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from control_plane.ids import check_id
from control_plane.models.blobs import BlobStore, BlobWriter, is_sha256
from control_plane.store.base import Store
from modelfleet.v1 import common_pb2, models_pb2

__all__ = ["MAX_REASON_CHARS", "V2_DATATYPES", "ModelRegistry", "ProbeResult"]

logger = logging.getLogger(__name__)

# The probe argument for each accepted format.
_FORMATS: dict[int, str] = {
    common_pb2.MODEL_FORMAT_ONNX: "onnx",
    common_pb2.MODEL_FORMAT_TORCHSCRIPT: "torchscript",
}
V2_DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
     "FP16", "FP32", "FP64", "BYTES"}
)
MAX_REASON_CHARS = 2000
MAX_VERSION = 2**31 - 1  # Model.version is an int32
_PROBE_MODULE = "node_agent.runtime.probe"
# The directory holding the control_plane and node_agent packages; put first on
# the probe's PYTHONPATH so it runs the node_agent of this very tree.
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What the probe said about one model file."""

    ok: bool
    inputs: tuple[common_pb2.TensorSpec, ...] = ()
    outputs: tuple[common_pb2.TensorSpec, ...] = ()
    error: str = ""
    refused: bool = False  # a file that must not be kept (zip bomb, ONNX external data)


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


def _label(model_id: str, version: int) -> str:
    return f"model {model_id} v{version}" if version else f"model {model_id}"


def _trim(text: str, *, keep_end: bool = False) -> str:
    text = text.strip()
    if len(text) <= MAX_REASON_CHARS:
        return text
    if keep_end:
        return "…" + text[-(MAX_REASON_CHARS - 1):]
    return text[: MAX_REASON_CHARS - 1] + "…"


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
        self._max_model_bytes = max_model_bytes
        self._probe_timeout_s = probe_timeout_s
        self._python = python
        self._probe_slots = asyncio.Semaphore(max(1, probe_concurrency))
        # sha256 -> number of uploads in flight that committed (or are
        # committing) that blob and have not written their record yet.
        self._holds: collections.Counter[str] = collections.Counter()
        self.remove_orphan_blobs()

    # ---- upload -------------------------------------------------------------
    async def upload(self, requests: AsyncIterator[models_pb2.UploadModelRequest]) -> models_pb2.Model:
        """Receive one model: metadata first, then chunks. Returns the stored Model.

        The returned model is durable (blob and record). A model that fails
        to load is stored as INVALID with the loader's reason.

        Raises:
            InvalidArgument: bad or misplaced metadata, empty upload, sha256
                or total_bytes mismatch.
            AlreadyExists: the explicit version exists.
            ResourceExhausted: the stream is larger than max_model_bytes.
            Whatever the iterator raises (a cancelled client): nothing is kept.
        """
        iterator = aiter(requests)
        try:
            first = await anext(iterator)
        except StopAsyncIteration:
            raise InvalidArgument("the first UploadModelRequest must carry metadata; the stream was empty") from None
        if first.WhichOneof("payload") != "metadata":
            raise InvalidArgument("the first UploadModelRequest must carry metadata")
        plan = self._check_metadata(first.metadata)

        writer = self._blobs.writer()
        held: str | None = None
        recorded = False
        try:
            await self._receive(iterator, writer, plan)
            sha256 = writer.sha256
            if plan.sha256 and sha256 != plan.sha256:
                raise InvalidArgument(f"sha256 mismatch: expected {plan.sha256}, got {sha256}")
            # Hold the blob from before its commit until its record exists, so
            # a concurrent delete of another model with this content keeps it.
            held = sha256
            self._holds[sha256] += 1
            await writer.acommit()
            probe = await self._probe(self._blobs.path(sha256), plan)
            if probe.refused:
                raise InvalidArgument(f"{_label(plan.model_id, plan.version)} refused: {probe.error}")
            model = self._new_model(plan, sha256=sha256, size=writer.size, probe=probe)
            self._record(model, explicit=plan.version != 0)
            recorded = True
        except BaseException:
            writer.discard()  # waits for a write/commit still running in its thread
            raise
        finally:
            if held is not None:
                self._holds[held] -= 1
                if self._holds[held] <= 0:
                    del self._holds[held]
                if not recorded and writer.committed:
                    self._remove_blob_if_unreferenced(held)
        logger.info(
            "uploaded model %s v%d: %d bytes, sha256 %s, %s %s",
            model.model_id, model.version, model.model_bytes, model.sha256,
            _state_name(model.state), model.state_reason[:200],
        )
        return model

    def _check_metadata(self, meta: models_pb2.UploadModelMetadata) -> _UploadPlan:
        model_id = check_id("model_id", meta.model_id)
        if meta.version < 0:
            raise InvalidArgument(f"version must be >= 0 (0 = the next version), got {meta.version}")
        if meta.version and self._store.get_model(model_id, meta.version) is not None:
            raise AlreadyExists(f"model {model_id} v{meta.version} already exists")
        if meta.format not in _FORMATS:
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
        return _UploadPlan(
            model_id=model_id,
            version=meta.version,
            format=meta.format,
            description=meta.description,
            sha256=expected,
            total_bytes=meta.total_bytes,
            inputs=inputs,
            outputs=outputs,
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

    def _new_model(self, plan: _UploadPlan, *, sha256: str, size: int, probe: ProbeResult) -> models_pb2.Model:
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
            model.state_reason = _trim(probe.error) or "the model could not be loaded"
            # Keep what the user declared, so they see what was checked.
            model.inputs.extend(plan.inputs)
            model.outputs.extend(plan.outputs)
        return model

    def _record(self, model: models_pb2.Model, *, explicit: bool) -> None:
        """Assign the version (if 0) and write the record; no await in here."""
        if explicit:
            if self._store.get_model(model.model_id, model.version) is not None:
                raise AlreadyExists(f"model {model.model_id} v{model.version} already exists")
        else:
            version = self._store.max_model_version(model.model_id) + 1
            if version > MAX_VERSION:
                raise FailedPrecondition(f"model {model.model_id} has used up its version numbers (v{MAX_VERSION})")
            model.version = version
        model.created_at.GetCurrentTime()
        self._store.put_model(model)

    # ---- probe --------------------------------------------------------------
    async def _probe(self, path: Path, plan: _UploadPlan) -> ProbeResult:
        """Load the file in a probe subprocess; never raises for a bad model."""
        fmt = _FORMATS[plan.format]
        argv = [self._python, "-m", _PROBE_MODULE, "--format", fmt, str(path)]
        if plan.inputs:
            argv += ["--inputs-json", json.dumps([_spec_json(s) for s in plan.inputs])]
        if plan.outputs:
            argv += ["--outputs-json", json.dumps([_spec_json(s) for s in plan.outputs])]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        async with self._probe_slots:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                    start_new_session=True,  # so a timeout kills its children too
                )
            except OSError as exc:
                logger.error("cannot start the model probe %s: %s", argv[0], exc)
                return ProbeResult(ok=False, error=f"the model could not be validated: cannot start the probe: {exc}")
            try:
                stdout, stderr = await asyncio.wait_for(proc.communicate(), self._probe_timeout_s)
            except TimeoutError:
                return ProbeResult(
                    ok=False,
                    error=f"the model did not load within {self._probe_timeout_s:g} s (probe timeout)",
                )
            finally:
                if proc.returncode is None:
                    _kill_group(proc.pid)
                    await proc.wait()
        result = _parse_probe(proc.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))
        if result.error:
            # Loaders name the file: show its name, not the server's data directory.
            result = dataclasses.replace(result, error=result.error.replace(str(path), path.name))
        return result

    # ---- reading ------------------------------------------------------------
    def get(self, model_id: str, version: int = 0) -> models_pb2.Model:
        """One version (0 = the newest). NotFound names the id and version."""
        check_id("model_id", model_id)
        _check_version(version)
        model = self._store.get_model(model_id, version)
        if model is None:
            raise NotFound(f"{_label(model_id, version)} not found")
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
                    f"model {model_id} v{version} is {_state_name(model.state)}: "
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
            f"model {model_id} has no NORMAL version (v{newest.version} is {_state_name(newest.state)}: "
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
            self._remove_blob_if_unreferenced(sha256)
        logger.info("deleted model %s versions %s", model_id, [m.version for m in targets])
        return targets

    def remove_orphan_blobs(self) -> builtins.list[str]:
        """Remove blobs that no record references and no upload holds.

        Such blobs are left when the control plane dies between a blob's
        commit and its record. Runs when the registry opens. Returns their sha256s.
        """
        referenced = {m.sha256 for m in self._store.list_models()}
        removed = []
        for sha256 in self._blobs.shas():
            if sha256 not in referenced and sha256 not in self._holds:
                if self._delete_blob(sha256):
                    removed.append(sha256)
        if removed:
            logger.info("removed %d unreferenced model blob(s)", len(removed))
        return removed

    def _remove_blob_if_unreferenced(self, sha256: str) -> None:
        if sha256 in self._holds:
            return
        if any(m.sha256 == sha256 for m in self._store.list_models()):
            return
        self._delete_blob(sha256)

    def _delete_blob(self, sha256: str) -> bool:
        try:
            return self._blobs.delete(sha256)
        except OSError:
            # The record is gone already; the next remove_orphan_blobs retries.
            logger.exception("cannot remove model blob %s", sha256)
            return False

    # Defined last: inside the class body, `list` names this method from here on.
    def list(self, model_id: str = "") -> builtins.list[models_pb2.Model]:
        """Every model (or every version of model_id), by model_id then version."""
        if model_id:
            check_id("model_id", model_id)
        return self._store.list_models(model_id)


# ---- helpers ----------------------------------------------------------------
def _check_version(version: int) -> None:
    if version < 0:
        raise InvalidArgument(f"version must be >= 0 (0 = the newest), got {version}")


def _state_name(state: int) -> str:
    name = common_pb2.ModelState.Name(state) if state in common_pb2.ModelState.values() else str(state)
    return name.removeprefix("MODEL_STATE_")


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


def _spec_json(spec: common_pb2.TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _spec_from_json(value: Any) -> common_pb2.TensorSpec:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ValueError(f"not a tensor spec: {value!r}")
    shape = [int(d) if isinstance(d, int) and d >= 0 else -1 for d in value.get("shape") or []]
    return common_pb2.TensorSpec(name=value["name"], datatype=str(value.get("datatype") or ""), shape=shape)


def _parse_probe(returncode: int | None, stdout: str, stderr: str) -> ProbeResult:
    """The probe's answer: its last JSON line on stdout; else why it crashed."""
    answer: dict[str, Any] | None = None
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict) and "ok" in parsed:
                answer = parsed
                break
    if answer is not None and answer.get("ok") is True and returncode == 0:
        try:
            inputs = tuple(_spec_from_json(v) for v in answer.get("inputs") or [])
            outputs = tuple(_spec_from_json(v) for v in answer.get("outputs") or [])
        except (TypeError, ValueError) as exc:
            return ProbeResult(ok=False, error=f"the model could not be validated: malformed probe answer: {exc}")
        return ProbeResult(ok=True, inputs=inputs, outputs=outputs)
    if answer is not None and answer.get("ok") is False:
        error = _trim(str(answer.get("error") or "the model could not be loaded"))
        return ProbeResult(ok=False, error=error, refused=answer.get("refused") is True)
    if returncode is not None and returncode < 0:
        try:
            how = f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"killed by signal {-returncode}"
    else:
        how = f"exit code {returncode}"
    tail = "\n".join(stderr.strip().splitlines()[-20:])
    error = f"the model could not be validated: the probe failed ({how})"
    if tail:
        error += f": {tail}"
    return ProbeResult(ok=False, error=_trim(error, keep_end=True))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
