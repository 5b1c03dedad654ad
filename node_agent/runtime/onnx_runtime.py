"""ONNX models in one onnxruntime InferenceSession.

The session is configured once at load: `intra_op_num_threads =
inference_threads`, `inter_op_num_threads = 1`, every graph optimisation,
and the CPU execution provider (CUDA first only when CUDA_VISIBLE_DEVICES is
set and onnxruntime offers the CUDA provider). Tensor specs come from the
session's NodeArgs; symbolic or unknown dimensions become -1.

Concurrency: `InferenceSession.run` is thread-safe, so the worker's
`model_threads` call `run` at once. They share the session's intra-op pool of
`inference_threads` threads (onnxruntime has one pool per session), which
bounds the CPUs one allocation uses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from node_agent.runtime.base import ExecutionError, InputError, LoadError, TensorSpec
from node_agent.runtime.dtypes import BYTES, ONNX_TYPES

logger = logging.getLogger(__name__)


def _providers() -> list[str]:
    """CUDA first when a GPU was given to this process and the build has it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and visible != "-1" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _spec(arg: Any, kind: str) -> TensorSpec:
    datatype = ONNX_TYPES.get(arg.type)
    if datatype is None:
        raise LoadError(f"{kind} {arg.name!r} has type {arg.type}, which modelfleet cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def _merge_declared(found: list[TensorSpec], declared: list[TensorSpec] | None, kind: str) -> list[TensorSpec]:
    """Declared specs must name the model's tensors with the same datatypes;
    their shapes may pin the model's dynamic dimensions."""
    if declared is None:
        return found
    by_name = {s.name: s for s in found}
    if sorted(by_name) != sorted(s.name for s in declared):
        raise LoadError(
            f"declared {kind}s {[s.name for s in declared]} do not match the model's {kind}s {[s.name for s in found]}"
        )
    merged = []
    for spec in declared:
        model = by_name[spec.name]
        if spec.datatype != model.datatype:
            raise LoadError(f"{kind} {spec.name!r}: declared datatype {spec.datatype}, the model has {model.datatype}")
        compatible = len(spec.shape) == len(model.shape) and all(
            m == -1 or d == m for d, m in zip(spec.shape, model.shape, strict=True)
        )
        if not compatible:
            raise LoadError(
                f"{kind} {spec.name!r}: declared shape {list(spec.shape)} does not fit the model's {list(model.shape)}"
            )
        merged.append(spec)
    return merged


class OnnxRuntime:
    """An onnxruntime session behind the `Runtime` protocol."""

    format = "onnx"

    def __init__(
        self,
        path: Path,
        *,
        inference_threads: int,
        declared_inputs: list[TensorSpec] | None = None,
        declared_outputs: list[TensorSpec] | None = None,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = inference_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 4  # fatal only: errors reach the caller as exceptions; stderr is read by the agent
        providers = _providers()
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind11 exception types
            raise LoadError(str(exc)) from exc
        self.inputs = _merge_declared([_spec(a, "input") for a in self.session.get_inputs()], declared_inputs, "input")
        self.outputs = _merge_declared(
            [_spec(a, "output") for a in self.session.get_outputs()], declared_outputs, "output"
        )
        self._string_inputs = frozenset(s.name for s in self.inputs if s.datatype == BYTES)
        logger.info("onnx model %s loaded with providers %s", path, self.session.get_providers())

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """See `Runtime.run`."""
        feed = {name: self._to_string_tensor(name, a) if name in self._string_inputs else a for name, a in inputs.items()}
        try:
            results = self.session.run(list(outputs), feed)
        except Exception as exc:
            raise ExecutionError(str(exc)) from exc
        return dict(zip(outputs, results, strict=True))

    @staticmethod
    def _to_string_tensor(name: str, array: np.ndarray) -> np.ndarray:
        """onnxruntime string tensors take `str` elements (it stringifies bytes
        objects with repr), so BYTES elements are decoded as UTF-8."""
        out = np.empty(array.shape, dtype=object)
        flat_in, flat_out = array.reshape(-1), out.reshape(-1)
        for i, item in enumerate(flat_in):
            if isinstance(item, bytes):
                try:
                    flat_out[i] = item.decode("utf-8")
                except UnicodeDecodeError:
                    raise InputError(
                        f"input '{name}': element {i} is not valid UTF-8 (onnxruntime string tensors hold text)"
                    ) from None
            else:
                flat_out[i] = str(item)
        return out
