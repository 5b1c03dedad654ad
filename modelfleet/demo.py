"""The demo model of `modelfleet up`: `y = relu(x @ W + b)`, built locally.

The graph is written with the onnx helper API (nothing is downloaded), with
fixed weights, so every build produces the same bytes and the same sha256:
re-running `modelfleet up` finds the model it uploaded before. numpy
computes the expected answer, so `up` can check what the fleet serves.

- input  `x`: FP32 [-1, 4]
- output `y`: FP32 [-1, 3]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

MODEL_ID = "demo"
INPUT_NAME = "x"
OUTPUT_NAME = "y"
# opset / IR version that every onnxruntime >= 1.16 loads.
_OPSET = 17
_IR_VERSION = 8

WEIGHTS: npt.NDArray[np.float32] = np.array(
    [
        [0.5, -1.0, 0.25],
        [-0.5, 0.75, 1.0],
        [1.5, 0.5, -0.25],
        [-1.0, 0.25, 0.5],
    ],
    dtype=np.float32,
)
BIAS: npt.NDArray[np.float32] = np.array([0.1, -0.2, 0.3], dtype=np.float32)

# Two rows, so the ReLU visibly clips: expected_output(DEMO_INPUT) is
# [[0.1, 2.8, 3.8], [3.6, 0.0, 0.05]] (up to float32 rounding).
DEMO_INPUT: npt.NDArray[np.float32] = np.array(
    [[1.0, 2.0, 3.0, 4.0], [2.0, 0.0, 1.0, -1.0]],
    dtype=np.float32,
)


def expected_output(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """What the demo model returns for `x` ([N, 4]), computed with numpy."""
    arr = np.asarray(x, dtype=np.float32)
    result: npt.NDArray[np.float32] = np.maximum(arr @ WEIGHTS + BIAS, np.float32(0)).astype(np.float32)
    return result


def build_demo_model(path: str | os.PathLike[str]) -> Path:
    """Write the demo ONNX model to `path` (atomically) and return the path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", [INPUT_NAME, "W"], ["xw"], name="matmul"),
            helper.make_node("Add", ["xw", "b"], ["z"], name="add"),
            helper.make_node("Relu", ["z"], [OUTPUT_NAME], name="relu"),
        ],
        name="modelfleet_demo",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [-1, 4])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [-1, 3])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "b")],
    )
    # make_tensor_value_info turns -1 into a dim_value; a symbolic dim is the
    # ONNX way to say "any batch size".
    for info in (graph.input[0], graph.output[0]):
        dim = info.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    model = helper.make_model(
        graph,
        producer_name="modelfleet-demo",
        opset_imports=[helper.make_opsetid("", _OPSET)],
        doc_string="modelfleet demo: y = relu(x @ W + b)",
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, target)
    return target
