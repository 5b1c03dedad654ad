"""The two benchmark models, built locally with the onnx helper (nothing is
downloaded), with fixed seeds so every run writes the same bytes.

- `mlp`: 784 -> 1024 -> 1024 -> 10 with ReLU, about 0.1 ms per call in
  onnxruntime on one thread, so serving overhead dominates its figures.
- `conv`: a ResNet-18-shaped network (7x7/2 stem, four stages of two basic
  blocks with 64/128/256/512 channels, global average pool, 1000-way
  classifier; batch norm folded into the convolutions) on 3x64x64 images.
  Without ImageNet's max pool, the first stage works at 32x32, as
  ResNet-18 does on CIFAR-sized inputs: 5-10 ms per call on one thread, so
  the runtime dominates, for a 48 KB request.

Both take a dynamic first (batch) dimension, so dynamic batching applies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9
MODELS = ("mlp", "conv")
INPUT_SHAPES = {"mlp": (784,), "conv": (3, 64, 64)}


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def build_mlp(path: Path) -> Path:
    """x FP32 [-1, 784] -> y FP32 [-1, 10]."""
    rng = np.random.default_rng(1234)
    sizes = (784, 1024, 1024, 10)
    nodes, inits, current = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [out if i == len(sizes) - 2 else f"a{i}"]))
        if i != len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )  # fmt: skip
    return _save(graph, path)


class _Net:
    """Accumulates nodes and He-initialised weights of a convolutional graph."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(4321)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int, *, relu: bool = True) -> str:
        w = (self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.01).astype(np.float32)
        wn, bn, out = self.name("w"), self.name("b"), self.name("c")
        self.inits += [numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)]
        pad = k // 2
        self.nodes.append(
            helper.make_node("Conv", [x, wn, bn], [out], kernel_shape=[k, k], strides=[stride, stride],
                             pads=[pad, pad, pad, pad])
        )  # fmt: skip
        if not relu:
            return out
        act = self.name("r")
        self.nodes.append(helper.make_node("Relu", [out], [act]))
        return act

    def block(self, x: str, cin: int, cout: int, stride: int) -> str:
        h = self.conv(x, cin, cout, 3, stride)
        h = self.conv(h, cout, cout, 3, 1, relu=False)
        skip = x if stride == 1 and cin == cout else self.conv(x, cin, cout, 1, stride, relu=False)
        total, act = self.name("s"), self.name("r")
        self.nodes += [helper.make_node("Add", [h, skip], [total]), helper.make_node("Relu", [total], [act])]
        return act


def build_conv(path: Path) -> Path:
    """x FP32 [-1, 3, 64, 64] -> y FP32 [-1, 1000] (ResNet-18 shaped, no max pool)."""
    net = _Net()
    h, cin = net.conv("x", 3, 64, 7, 2), 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        h = net.block(h, cin, cout, stride)
        h = net.block(h, cout, cout, 1)
        cin = cout
    net.nodes.append(helper.make_node("GlobalAveragePool", [h], ["gap"]))
    net.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    w = (net.rng.standard_normal((1000, 512)) / np.sqrt(512)).astype(np.float32)
    net.inits += [numpy_helper.from_array(w, "fc_w"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b")]
    net.nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], transB=1))
    graph = helper.make_graph(
        net.nodes, "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1000])],
        net.inits,
    )  # fmt: skip
    return _save(graph, path)


def build(name: str, directory: Path) -> Path:
    """The model file `name` in `directory`, built once and then reused."""
    path = directory / f"{name}.onnx"
    if path.exists():
        return path
    return {"mlp": build_mlp, "conv": build_conv}[name](path)
