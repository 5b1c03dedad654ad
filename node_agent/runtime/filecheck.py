"""Checks of an uploaded model file before any loader touches it.

The registry's probe runs these first (node_agent.runtime.probe), so a file
that would make a loader read outside the model or expand without bound is
refused with a clear reason instead of being loaded:

- TorchScript is a zip archive. Its central directory is read (nothing is
  decompressed): an entry with an absolute or `..` path, or entries whose
  declared sizes expand to more than
  MAX_EXPANSION times the archive (and more than EXPANSION_FLOOR bytes) —
  a zip bomb — are refused. torch stores tensors uncompressed and deflates
  only small code files, so real models expand about 1x. A file that is no
  zip is left to torch, whose message says why.
- ONNX may keep tensors in "external data" files named by a path inside
  the model. modelfleet stores and ships one file per model, and such a
  path could name any file beside the blob (or elsewhere), so a model with
  external data is refused. The model's protobuf is parsed without loading
  external data; nothing is executed. A file that does not parse is left to
  onnxruntime, whose message says why.

Pure functions raising LoadError; no grpc, safe in the probe subprocess.
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from node_agent.runtime.base import LoadError

MAX_EXPANSION = 20
EXPANSION_FLOOR = 64 * 1024 * 1024


def check_torchscript(path: Path) -> None:
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip at all: torch's own message says why
    total = 0
    for entry in entries:
        name = PurePosixPath(entry.filename)
        if name.is_absolute() or ".." in name.parts:
            raise LoadError(f"TorchScript archive entry {entry.filename!r} has an unsafe path")
        total += entry.file_size
    if total > max(MAX_EXPANSION * size, EXPANSION_FLOOR):
        raise LoadError(
            f"zip bomb-like archive: its {len(entries)} entries expand to {total} bytes from {size} "
            f"(more than {MAX_EXPANSION}x); refused without loading it"
        )


def check_onnx(path: Path) -> None:
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # not ONNX at all: onnxruntime's own message says why
        return

    def tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
        found = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    found.append(attr.t)
                found.extend(attr.tensors)
                if attr.HasField("g"):
                    found.extend(tensors(attr.g))
                for sub in attr.graphs:
                    found.extend(tensors(sub))
        return found

    for tensor in tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise LoadError(
                f"the model keeps tensor {tensor.name!r} in an external data file ({where!r}); modelfleet serves "
                "self-contained ONNX files only (save with onnx.save_model(..., save_as_external_data=False))"
            )


def check_model_file(path: str | Path, fmt: str) -> None:
    """Raise LoadError if the file must not be loaded (see the module docstring)."""
    file = Path(path)
    if not file.is_file():
        raise LoadError(f"model file {str(file)!r} does not exist or is not a file")
    if fmt == "torchscript":
        check_torchscript(file)
    elif fmt == "onnx":
        check_onnx(file)
