"""Tiny model files for tests, built locally (nothing is downloaded).

Every builder writes one file and returns its path, so tests write e.g.
`onnx_add(tmp_path / "add.onnx")`. ONNX models use opset 17 and IR version 9
(loadable by any onnxruntime >= 1.16); random weights come from fixed seeds
so the same call always writes the same bytes. Importing this module does not
import torch; `torchscript_add` imports it when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9
ADD_CONSTANT = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)


def _save(graph: onnx.GraphProto, path: Path | str) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    out = Path(path)
    onnx.save(model, str(out))
    return out


def onnx_add(path: Path | str, constant: Sequence[float] | None = None) -> Path:
    """y = x + [1, 2, 3, 4] (or + constant); input x FP32 [-1, 4], output y FP32 [-1, 4].

    Dynamic batch, so the worker does not warm it up. Exact in any runtime.
    Different constants make versions of one model tell apart by their output.
    """
    c = ADD_CONSTANT if constant is None else np.asarray(constant, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(c, "c")],
    )
    return _save(graph, path)


def onnx_mlp(path: Path | str, sizes: Sequence[int] = (784, 1024, 1024, 10)) -> Path:
    """A ReLU multi-layer perceptron: x FP32 [-1, sizes[0]] -> y FP32 [-1, sizes[-1]].

    One MatMul + Add per consecutive pair of `sizes` (ReLU between layers,
    none after the last), seeded random weights scaled by 1/sqrt(fan-in).
    The default is an MNIST-sized model (~7 MB); pass small sizes for speed.
    """
    if len(sizes) < 2:
        raise ValueError("sizes needs at least an input and an output width")
    rng = np.random.default_rng(1234)
    nodes, inits = [], []
    current = "x"
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    return _save(graph, path)


def onnx_slow(path: Path | str, *, matmuls: int = 32) -> Path:
    """A deliberately slow model for queue tests: x FP32 [-1] -> y FP32 [].

    s = sum(x) is broadcast into a 1024x1024 matrix that is multiplied by
    the same 1024x1024 weight `matmuls` times (2 GFLOP each, ~10-25 ms on
    one modern core), so one call takes roughly 0.3-1 s with one inference
    thread. The chain depends on x, so onnxruntime cannot fold it at load;
    the input is dynamic, so the worker does not warm it up. File ~4 MB.
    """
    rng = np.random.default_rng(99)
    w = (rng.standard_normal((1024, 1024)) / 32.0).astype(np.float32)
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Expand", ["s", "square"], ["h0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"h{matmuls}"], ["y"], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1024, 1024], dtype=np.int64), "square")],
    )
    return _save(graph, path)


def onnx_warmup_fails(path: Path | str) -> Path:
    """Loads fine, but every run raises: x FP32 [2] -> y FP32 [1].

    y = Gather(x, indices=[5]) on axis 0: index 5 is out of range for a
    length-2 tensor, which onnxruntime only finds when it runs (the data is
    an input, so nothing is folded at load). The input shape is static, so
    the worker's warm-up inference hits the error and the worker exits 3.
    """
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "idx"], ["y"], axis=0)],
        "warmup_fails",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array([5], dtype=np.int64), "idx")],
    )
    return _save(graph, path)


def onnx_gather(path: Path | str) -> Path:
    """y = [10, 20, 30][x]: input x INT64 [-1] (indices), output y FP32 [-1].

    Runs fine for indices in [-3, 2]; any other index makes onnxruntime raise
    at run time (a model execution error), which is how tests count
    error_count without a worker that cannot start.
    """
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "x"], ["y"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.array([10.0, 20.0, 30.0], dtype=np.float32), "table")],
    )
    return _save(graph, path)


def onnx_two_types(path: Path | str) -> Path:
    """y = x + [1, 2, 3, 4] and k = ids + 1: inputs x FP32 [-1, 4] and ids INT64 [-1], outputs y FP32
    [-1, 4] and k INT64 [-1]. Two datatypes each way in one call, exact in any runtime."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"]), helper.make_node("Add", ["ids", "one"], ["k"])],
        "two_types",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("k", TensorProto.INT64, ["n"])],
        [numpy_helper.from_array(ADD_CONSTANT, "c"), numpy_helper.from_array(np.array([1], dtype=np.int64), "one")],
    )  # fmt: skip
    return _save(graph, path)


def onnx_string_identity(path: Path | str) -> Path:
    """y = x for text: input x BYTES [-1], output y BYTES [-1] (onnx STRING).

    Exercises the BYTES length-prefixed encoding end to end.
    """
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "string_identity",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["n"])],
    )
    return _save(graph, path)


def torchscript_add(path: Path | str) -> Path:
    """A scripted module computing y = x * 2 + 1 (one Tensor argument `x`).

    Undeclared, it serves input "x" (FP32, any shape) and output "OUTPUT__0".
    """
    import warnings

    import torch

    class AddModule(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 + 1

    out = Path(path)
    with warnings.catch_warnings():  # torch 2.10+ marks torch.jit deprecated; the format is what we serve
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(AddModule()), str(out))
    return out


def corrupt_file(path: Path | str, *, size: int = 4096) -> Path:
    """`size` seeded random bytes: neither a valid ONNX nor TorchScript file."""
    out = Path(path)
    out.write_bytes(np.random.default_rng(7).bytes(size))
    return out


def onnx_external_data(path: Path | str, *, location: str = "../../modelfleet.db") -> Path:
    """onnx_add whose constant claims to live in an external data file at `location`
    (a path that would reach outside the model: the registry must refuse it)."""
    constant = numpy_helper.from_array(ADD_CONSTANT, "c")
    constant.ClearField("raw_data")
    constant.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        constant.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "add_external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [constant],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    out = Path(path)
    out.write_bytes(model.SerializeToString())
    return out


def zip_bomb(path: Path | str, *, expands_to: int = 96 << 20) -> Path:
    """A small zip (a TorchScript archive is one) whose one entry inflates to `expands_to` zero bytes."""
    import zipfile

    out = Path(path)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("model/data.pkl", "w", force_zip64=True) as entry:
            block = bytes(1 << 20)
            for _ in range(expands_to >> 20):
                entry.write(block)
    return out
