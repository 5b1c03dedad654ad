"""TorchScript models loaded with torch.jit.load.

A TorchScript file knows its argument names but neither dtypes nor shapes.
Unless specs are declared, the inputs are the forward arguments without a
default (excluding self), each FP32 of any shape, and the outputs are named
OUTPUT__0, OUTPUT__1, ... (one per tuple element when forward returns a
tuple), FP32 of any shape. Declared specs are fed positionally to forward in
the order given, and the outputs are matched positionally too.

Concurrency: `torch.set_num_threads(inference_threads)` is process-wide, set
once at load; every `run` enters `torch.inference_mode()` (thread-local), so
the worker's `model_threads` may call `run` at once on the one module.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from node_agent.runtime.base import ExecutionError, LoadError, TensorSpec
from node_agent.runtime.dtypes import BYTES

logger = logging.getLogger(__name__)


def _default_inputs(schema: Any) -> list[TensorSpec]:
    specs = []
    for arg in schema.arguments[1:]:  # [0] is self
        if arg.has_default_value():
            continue
        if arg.type.kind() != "TensorType":
            raise LoadError(f"forward argument {arg.name!r} has type {arg.type}; only Tensor arguments can be fed")
        specs.append(TensorSpec(name=arg.name, datatype="FP32", shape=(), any_shape=True))
    return specs


def _default_outputs(schema: Any) -> list[TensorSpec]:
    returned = schema.returns[0].type if schema.returns else None
    kind = returned.kind() if returned is not None else "NoneType"
    elements = returned.elements() if returned is not None and kind == "TupleType" else []
    if kind == "TensorType":
        count = 1
    elif elements and all(e.kind() == "TensorType" for e in elements):
        count = len(elements)
    else:
        raise LoadError(f"forward returns {returned}; declare the outputs (--outputs-json) to serve it")
    return [TensorSpec(name=f"OUTPUT__{i}", datatype="FP32", shape=(), any_shape=True) for i in range(count)]


def _as_any_shape(specs: list[TensorSpec]) -> list[TensorSpec]:
    """TorchScript declarations with shape [] mean "any shape"."""
    return [TensorSpec(name=s.name, datatype=s.datatype, shape=s.shape, any_shape=not s.shape) for s in specs]


class TorchScriptRuntime:
    """A TorchScript module behind the `Runtime` protocol."""

    format = "torchscript"

    def __init__(
        self,
        path: Path,
        *,
        inference_threads: int,
        declared_inputs: list[TensorSpec] | None = None,
        declared_outputs: list[TensorSpec] | None = None,
    ) -> None:
        try:
            import torch
        except ImportError as exc:
            raise LoadError(f"torch is not installed: {exc}") from exc
        self._torch = torch
        torch.set_num_threads(inference_threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only settable before any inter-op work; keep what is set
            pass
        try:
            with warnings.catch_warnings():  # torch marks torch.jit deprecated; TorchScript is the format we serve
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        except Exception as exc:  # torch raises RuntimeError/ValueError with the reason
            raise LoadError(str(exc)) from exc
        forward = getattr(module, "forward", None)
        schema = getattr(forward, "schema", None)
        if schema is None:
            raise LoadError("the TorchScript file has no scripted forward method")
        module.eval()
        self._module = module
        n_args = len(schema.arguments) - 1
        if declared_inputs:
            required = sum(1 for a in schema.arguments[1:] if not a.has_default_value())
            if not required <= len(declared_inputs) <= n_args:
                raise LoadError(
                    f"{len(declared_inputs)} inputs declared, but forward takes {required} to {n_args} tensor arguments"
                )
            for spec in declared_inputs:
                if spec.datatype == BYTES:
                    raise LoadError(f"input {spec.name!r}: TorchScript models cannot take BYTES tensors")
            self.inputs = _as_any_shape(declared_inputs)
        else:
            self.inputs = _default_inputs(schema)
        self.outputs = _as_any_shape(declared_outputs) if declared_outputs else _default_outputs(schema)
        self._output_index = {s.name: i for i, s in enumerate(self.outputs)}
        logger.info("torchscript model %s loaded (%d threads)", path, inference_threads)

    def _tensor(self, array: np.ndarray) -> Any:
        # torch.from_numpy shares memory but warns on read-only arrays (which
        # np.frombuffer over the request bytes is), so those are copied.
        if not array.flags.writeable:
            array = array.copy()
        return self._torch.from_numpy(array)

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """See `Runtime.run`."""
        args = [self._tensor(inputs[spec.name]) for spec in self.inputs]
        try:
            with self._torch.inference_mode():
                result = self._module(*args)
        except Exception as exc:
            raise ExecutionError(str(exc)) from exc
        produced = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(produced) != len(self.outputs):
            raise ExecutionError(f"the model returned {len(produced)} outputs, expected {len(self.outputs)}")
        answer: dict[str, np.ndarray] = {}
        for name in outputs:
            value = produced[self._output_index[name]]
            try:
                answer[name] = value.detach().cpu().numpy() if isinstance(value, self._torch.Tensor) else np.asarray(value)
            except (TypeError, RuntimeError) as exc:  # e.g. bfloat16 has no numpy type
                raise ExecutionError(f"output {name!r}: {exc}") from exc
        return answer
