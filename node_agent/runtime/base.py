"""The runtime interface: what every model loader offers the worker.

A `Runtime` owns one loaded model (an onnxruntime session or a TorchScript
module) and describes its tensors as `TensorSpec`s (V2 datatype names, -1 for
a dynamic dimension). `load_runtime` is the only constructor the worker and
the probe use; the concrete loaders import onnxruntime or torch lazily, so
loading an ONNX model never pays for importing torch.

Concurrency: a runtime is configured once at load (threads, providers) and
afterwards `run` may be called from several OS threads at once (the worker's
`model_threads`); both onnxruntime sessions and TorchScript modules allow it.
Nothing here imports grpc: errors are the plain exceptions below, which the
worker maps onto its own domain errors.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from node_agent.runtime.dtypes import V2_DATATYPES

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
_MAX_MESSAGE_CHARS = 4000


class LoadError(Exception):
    """The model file could not be loaded (permanent: retrying will not help).

    `str(error)` is the loader's message on one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class ExecutionError(Exception):
    """The model raised while running (bad values, out-of-range index, ...)."""


class InputError(ValueError):
    """An input could not be handed to the model (e.g. non-UTF-8 BYTES for
    onnxruntime's string tensors). Raised before the model runs."""


def one_line(message: str) -> str:
    """`message` with all whitespace runs collapsed, so it fits one log line."""
    text = " ".join(str(message).split())
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[: _MAX_MESSAGE_CHARS - 1] + "…"
    return text or "unknown error"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One model input or output.

    Attributes:
        name: the tensor name clients use.
        datatype: a V2 name (FP32, INT64, BYTES, ...).
        shape: dimensions, -1 for a dynamic one; () for a scalar.
        any_shape: the rank is unknown too (undeclared TorchScript tensors):
            any shape is accepted. It is written as shape [] in JSON.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    any_shape: bool = False

    @property
    def is_static(self) -> bool:
        """True when the exact shape is known (no -1, rank known)."""
        return not self.any_shape and all(d >= 0 for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        """The JSON form used by the probe, the ready file and the CLI."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, value: Any, *, empty_shape_is_any: bool = False) -> TensorSpec:
        """Parse `{"name", "datatype", "shape"}`; shape -1 = dynamic.

        Args:
            value: the decoded JSON object.
            empty_shape_is_any: read shape [] (or a missing shape) as "any
                shape" rather than "scalar" (TorchScript declarations).

        Raises:
            ValueError: a field is missing or has the wrong type.
        """
        if not isinstance(value, dict):
            raise ValueError(f"tensor spec must be an object, got {value!r}")
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor spec needs a non-empty string 'name', got {value!r}")
        datatype = value.get("datatype", "FP32")
        if datatype not in V2_DATATYPES:
            raise ValueError(f"tensor spec {name!r}: datatype {datatype!r} is not one of {sorted(V2_DATATYPES)}")
        shape = value.get("shape", [])
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise ValueError(f"tensor spec {name!r}: shape must be a list of integers, got {shape!r}")
        if any(d < -1 for d in shape):
            raise ValueError(f"tensor spec {name!r}: dimensions must be >= -1, got {shape!r}")
        return cls(name=name, datatype=datatype, shape=tuple(shape), any_shape=empty_shape_is_any and not shape)


def parse_specs_json(text: str, *, empty_shape_is_any: bool = False) -> list[TensorSpec]:
    """Parse a JSON list of tensor specs (the --inputs-json / --outputs-json flags).

    Raises:
        ValueError: not JSON, not a list, a malformed spec or a repeated name.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(value, list):
        raise ValueError("expected a JSON list of {name, datatype, shape} objects")
    specs = [TensorSpec.from_json(v, empty_shape_is_any=empty_shape_is_any) for v in value]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"tensor names must be unique, got {names}")
    return specs


class Runtime(Protocol):
    """One loaded model.

    `inputs`/`outputs` never change after load. `run` is thread-safe.
    """

    format: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the model once.

        Args:
            inputs: every input by name, already checked against `inputs`.
            outputs: the output names wanted, in order (a subset of `outputs`).

        Returns:
            Each requested output by name.

        Raises:
            InputError: an input could not be converted for the model.
            ExecutionError: the model raised.
        """
        ...


def load_runtime(
    path: str | Path,
    fmt: str,
    *,
    inference_threads: int,
    declared_inputs: Sequence[TensorSpec] | None = None,
    declared_outputs: Sequence[TensorSpec] | None = None,
) -> Runtime:
    """Load one model file.

    Args:
        path: the model file.
        fmt: "onnx" or "torchscript".
        inference_threads: threads one inference may use (onnxruntime
            intra-op threads / torch.set_num_threads).
        declared_inputs: specs to use instead of what the file says
            (TorchScript files carry no dtypes or shapes); for ONNX they must
            agree with the file and may pin dynamic dimensions.
        declared_outputs: likewise for outputs.

    Raises:
        LoadError: the file is missing, not a model of that format, or its
            tensors cannot be served; the message is the loader's.
    """
    if fmt not in FORMATS:
        raise LoadError(f"unknown model format {fmt!r}; expected one of {list(FORMATS)}")
    if inference_threads < 1:
        raise LoadError(f"inference_threads must be >= 1, got {inference_threads}")
    model_path = Path(path)
    if not model_path.is_file():
        raise LoadError(f"model file {str(model_path)!r} does not exist or is not a file")
    declared_in = list(declared_inputs) if declared_inputs else None
    declared_out = list(declared_outputs) if declared_outputs else None
    if fmt == "onnx":
        from node_agent.runtime.onnx_runtime import OnnxRuntime

        return OnnxRuntime(
            model_path, inference_threads=inference_threads, declared_inputs=declared_in, declared_outputs=declared_out
        )
    from node_agent.runtime.torch_runtime import TorchScriptRuntime

    return TorchScriptRuntime(
        model_path, inference_threads=inference_threads, declared_inputs=declared_in, declared_outputs=declared_out
    )
