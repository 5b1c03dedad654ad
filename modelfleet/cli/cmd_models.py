"""`modelfleet models upload|list|get|delete`: the model registry.

Uploads stream the file in 1 MiB chunks after one metadata message that
carries the sha256 and size computed locally, so the server can verify what
it received. The same bytes uploaded again answer with the existing version
(before any chunk is sent) unless `--new-version` is given. A TorchScript
file needs `--input` specs (it records no datatypes or shapes). Progress goes to stderr (a bar on a TTY, percentage lines
otherwise, nothing with --json) and never mixes into stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from modelfleet.cli import pages, render
from modelfleet.cli.client import DEFAULT_RPC_TIMEOUT, Client
from modelfleet.cli.errors import CliError
from modelfleet.cli.parsing import arg_type, model_format, parse_tensor_spec, positive_int
from modelfleet.v1 import common_pb2, models_pb2

CHUNK_BYTES = 1024 * 1024


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="upload, list, get and delete models", parents=parents)
    msub = models.add_subparsers(dest="action", metavar="ACTION", required=True)

    up = msub.add_parser("upload", help="upload a model file (ONNX or TorchScript)", parents=parents)
    up.add_argument("path", type=Path, metavar="PATH")
    up.add_argument("--model-id", required=True)
    up.add_argument("--version", type=arg_type(positive_int, "version"), default=0, help="0 = next (default)")
    up.add_argument("--format", choices=("onnx", "torchscript"),
                    help="default from the extension: .onnx, .pt/.pth/.torchscript")
    up.add_argument("--new-version", action="store_true",
                    help="record a new version even when an existing version has the same bytes "
                         "(default: answer with that version)")
    up.add_argument("--description", default="")
    up.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME:DTYPE:DIMS",
                    type=arg_type(parse_tensor_spec, "tensor spec"),
                    help="declared input, e.g. x:FP32:-1,4 (repeatable; required for TorchScript)")
    up.add_argument("--output", dest="outputs", action="append", default=[], metavar="NAME:DTYPE:DIMS",
                    type=arg_type(parse_tensor_spec, "tensor spec"), help="declared output (repeatable)")
    up.set_defaults(func=upload)

    ls = msub.add_parser("list", help="list models (every version)", parents=parents)
    ls.add_argument("model_id", nargs="?", default="", metavar="MODEL_ID", help="only this model")
    pages.add_limit(ls)
    ls.set_defaults(func=list_models)

    get = msub.add_parser("get", help="show one model version", parents=parents)
    get.add_argument("model_id", metavar="MODEL_ID")
    get.add_argument("--version", type=arg_type(positive_int, "version"), default=0, help="0 = newest (default)")
    get.set_defaults(func=get_model)

    delete = msub.add_parser("delete", help="delete a model version (or every version)", parents=parents)
    delete.add_argument("model_id", metavar="MODEL_ID")
    delete.add_argument("--version", type=arg_type(positive_int, "version"), default=0,
                        help="0 = every version (default)")
    delete.set_defaults(func=delete_model)


class Progress:
    """Upload progress on stderr: a redrawn bar on a TTY, else a line per 10 %."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.sent = 0
        self._last_step = -1

    def update(self, n: int) -> None:
        self.sent += n
        if not self.enabled:
            return
        pct = 100 if self.total == 0 else min(100, self.sent * 100 // self.total)
        if self.tty:
            filled = pct * 30 // 100
            bar = "#" * filled + "-" * (30 - filled)
            done = f"{render.size(self.sent)}/{render.size(self.total)}"
            self.stream.write(f"\ruploading {self.label} [{bar}] {pct:3d}% {done}   ")
            self.stream.flush()
        elif pct // 10 != self._last_step:
            self._last_step = pct // 10
            print(f"uploading {self.label}: {pct}% ({self.sent}/{self.total} bytes)", file=self.stream, flush=True)

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in chunks."""
    digest = hashlib.sha256()
    total = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            total += len(chunk)
    return digest.hexdigest(), total


def upload_requests(path: Path, metadata: models_pb2.UploadModelMetadata,
                    progress: Progress | None = None) -> Iterator[models_pb2.UploadModelRequest]:
    """The request stream: the metadata, then the file in 1 MiB chunks."""
    yield models_pb2.UploadModelRequest(metadata=metadata)
    if progress is not None and metadata.total_bytes == 0:
        progress.update(0)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield models_pb2.UploadModelRequest(chunk=chunk)
            if progress is not None:
                progress.update(len(chunk))


def upload_file(client: Client, path: Path, *, model_id: str, version: int = 0, fmt: int,
                description: str = "", inputs: list[common_pb2.TensorSpec] | None = None,
                outputs: list[common_pb2.TensorSpec] | None = None,
                progress: bool = True, new_version: bool = False) -> models_pb2.Model:
    """Upload `path` and return the registered Model (used by `up` too)."""
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    sha256, total = file_digest(path)
    metadata = models_pb2.UploadModelMetadata(
        model_id=model_id, version=version, format=fmt, description=description,  # type: ignore[arg-type]
        sha256=sha256, total_bytes=total, inputs=inputs or [], outputs=outputs or [], new_version=new_version,
    )
    bar = Progress(path.name, total, enabled=progress)
    try:
        model: models_pb2.Model = client.models.UploadModel(upload_requests(path, metadata, bar))
    finally:
        bar.finish()
    return model


def state_text(model: models_pb2.Model, limit: int = 0) -> str:
    """`NORMAL`, or `INVALID (reason)`; `limit` shortens the reason (tables)."""
    state = render.enum_name(common_pb2.ModelState, model.state).upper()
    reason = " ".join(model.state_reason.split())
    if limit and len(reason) > limit:
        reason = reason[: limit - 3] + "..."
    return f"{state} ({reason})" if reason else state


def _specs(specs: list[common_pb2.TensorSpec]) -> str:
    return ", ".join(f"{s.name}:{s.datatype}:{list(s.shape)}" for s in specs) or "-"


def print_model(model: models_pb2.Model, out: TextIO | None = None) -> None:
    rows = [
        ("model_id", model.model_id),
        ("version", model.version),
        ("format", render.enum_name(common_pb2.ModelFormat, model.format)),
        ("model_bytes", model.model_bytes),
        ("sha256", model.sha256),
        ("state", state_text(model)),
        ("inputs", _specs(list(model.inputs))),
        ("outputs", _specs(list(model.outputs))),
        ("description", model.description or "-"),
        ("created_at", render.timestamp(model.created_at)),
    ]
    for key, value in rows:
        print(f"{key + ':':<13}{value}", file=out or sys.stdout)


def upload(args: argparse.Namespace, client: Client) -> int:
    try:
        fmt = model_format(args.path, args.format)
    except ValueError as exc:
        raise CliError(str(exc), code=2) from None
    if fmt == common_pb2.MODEL_FORMAT_TORCHSCRIPT and not args.inputs:
        raise CliError(
            f"{args.path} is TorchScript, which records no input datatypes or shapes: declare every argument of "
            "forward with --input NAME:DTYPE:DIMS, e.g. --input x:FP32:-1,4 (repeatable, in argument order; "
            "-1 = any size)", code=2)
    model = upload_file(client, args.path, model_id=args.model_id, version=args.version, fmt=fmt,
                        description=args.description, inputs=args.inputs, outputs=args.outputs,
                        progress=not args.json, new_version=args.new_version)
    if args.json:
        render.print_proto(model)
    else:
        print_model(model)
    if model.state == common_pb2.MODEL_STATE_INVALID:
        print(f"error: model {model.model_id} v{model.version} is INVALID: {model.state_reason}", file=sys.stderr)
        return 1
    return 0


def list_models(args: argparse.Namespace, client: Client) -> int:
    resp = pages.collect(client.models.ListModels, models_pb2.ListModelsRequest(model_id=args.model_id), "models",
                         limit=args.limit)
    if args.json:
        render.print_proto(resp)
        return 0
    rows = [
        (m.model_id, m.version, render.enum_name(common_pb2.ModelFormat, m.format), state_text(m, limit=40),
         render.size(m.model_bytes), m.sha256[:12] or "-", render.timestamp(m.created_at))
        for m in sorted(resp.models, key=lambda m: (m.model_id, m.version))
    ]
    render.table(("model_id", "version", "format", "state", "size", "sha256", "created"), rows)
    return 0


def get_model(args: argparse.Namespace, client: Client) -> int:
    model = client.models.GetModel(models_pb2.GetModelRequest(model_id=args.model_id, version=args.version),
                                   timeout=DEFAULT_RPC_TIMEOUT)
    if args.json:
        render.print_proto(model)
    else:
        print_model(model)
    return 0


def delete_model(args: argparse.Namespace, client: Client) -> int:
    resp = client.models.DeleteModel(models_pb2.DeleteModelRequest(model_id=args.model_id, version=args.version),
                                     timeout=DEFAULT_RPC_TIMEOUT)
    if args.json:
        render.print_proto(resp)
        return 0
    for model in resp.deleted:
        print(f"deleted {model.model_id} v{model.version}")
    if not resp.deleted:
        print("nothing deleted")
    return 0
