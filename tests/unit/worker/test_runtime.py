"""node_agent.runtime: loaders, tensor specs, dtype mapping and the probe CLI.

Models are built by tests/modelbuild.py into a per-module temp dir; the
probe runs as a real subprocess, as the control plane runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import modelbuild as mb
import numpy as np
import pytest

from node_agent.runtime import ExecutionError, LoadError, TensorSpec, load_runtime, parse_specs_json
from node_agent.runtime.dtypes import V2_DATATYPES, element_size, numpy_dtype, v2_datatype, wire_array

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "add": mb.onnx_add(d / "add.onnx"),
        "mlp": mb.onnx_mlp(d / "mlp.onnx", sizes=(8, 16, 3)),
        "warmup_fails": mb.onnx_warmup_fails(d / "warmup_fails.onnx"),
        "strings": mb.onnx_string_identity(d / "strings.onnx"),
        "ts_add": mb.torchscript_add(d / "add.pt"),
        "corrupt": mb.corrupt_file(d / "corrupt.bin"),
    }


def run_probe(*args: str) -> tuple[int, dict[str, object], str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "node_agent.runtime.probe", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"probe must print exactly one line, got {proc.stdout!r} (stderr {proc.stderr!r})"
    return proc.returncode, json.loads(lines[0]), proc.stderr


# ---- dtypes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [
        ("BOOL", np.bool_), ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32),
        ("UINT64", np.uint64), ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32),
        ("INT64", np.int64), ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64),
        ("BYTES", np.object_),
    ],
)  # fmt: skip
def test_datatype_round_trip(datatype: str, dtype: type) -> None:
    assert numpy_dtype(datatype) == np.dtype(dtype)
    assert v2_datatype(np.dtype(dtype)) == datatype
    assert element_size(datatype) == (None if datatype == "BYTES" else np.dtype(dtype).itemsize)


def test_dtype_mapping_edges() -> None:
    assert set(V2_DATATYPES) == {
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    }  # fmt: skip
    assert v2_datatype(np.dtype("S3")) == "BYTES" and v2_datatype(np.dtype("U3")) == "BYTES"
    assert v2_datatype(np.dtype(">f4")) == "FP32"
    for bad in ("BF16", "FLOAT", ""):
        with pytest.raises(ValueError):
            numpy_dtype(bad)
    with pytest.raises(ValueError):
        v2_datatype(np.dtype(np.complex64))
    big_endian = np.arange(6, dtype=">i4").reshape(2, 3).T
    wired = wire_array(big_endian)
    assert wired.dtype == np.dtype("<i4") and wired.flags.c_contiguous
    np.testing.assert_array_equal(wired, big_endian)
    native = np.zeros((2, 2), np.float32)
    assert wire_array(native) is native  # no copy on the fast path


def test_tensor_spec_json() -> None:
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1, 4))
    assert spec.to_json() == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    assert TensorSpec.from_json(spec.to_json()) == spec
    assert not spec.is_static and TensorSpec(name="s", datatype="INT64", shape=()).is_static
    anything = parse_specs_json('[{"name": "a", "datatype": "INT64", "shape": []}]', empty_shape_is_any=True)[0]
    assert anything.any_shape and not anything.is_static and anything.to_json()["shape"] == []
    for bad in ('{"name": "a"}', '[{"datatype": "FP32"}]', '[{"name": "a", "datatype": "F32"}]',
                '[{"name": "a", "shape": [-2]}]', '[{"name": "a"}, {"name": "a"}]', "not json"):  # fmt: skip
        with pytest.raises(ValueError):
            parse_specs_json(bad)


# ---- ONNX --------------------------------------------------------------------


def test_onnx_add_specs_and_run(models: dict[str, Path]) -> None:
    rt = load_runtime(models["add"], "onnx", inference_threads=2)
    assert rt.format == "onnx"
    assert rt.inputs == [TensorSpec(name="x", datatype="FP32", shape=(-1, 4))]
    assert rt.outputs == [TensorSpec(name="y", datatype="FP32", shape=(-1, 4))]
    options = rt.session.get_session_options()  # type: ignore[attr-defined]
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert rt.session.get_providers() == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(rt.run({"x": x}, ["y"])["y"], x + mb.ADD_CONSTANT)
    read_only = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(2, 4)  # the worker's zero-copy input
    np.testing.assert_array_equal(rt.run({"x": read_only}, ["y"])["y"], x + mb.ADD_CONSTANT)


def test_onnx_mlp_and_strings(models: dict[str, Path]) -> None:
    rt = load_runtime(models["mlp"], "onnx", inference_threads=1)
    assert [s.to_json() for s in rt.inputs] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    assert rt.run({"x": np.ones((5, 8), np.float32)}, ["y"])["y"].shape == (5, 3)
    text = load_runtime(models["strings"], "onnx", inference_threads=1)
    assert text.inputs[0].datatype == "BYTES"
    out = text.run({"x": np.array([b"hello", "wörld".encode()], dtype=object)}, ["y"])["y"]
    assert list(out) == ["hello", "wörld"]


def test_onnx_declared_specs_must_agree(models: dict[str, Path]) -> None:
    pinned = load_runtime(
        models["add"], "onnx", inference_threads=1,
        declared_inputs=[TensorSpec(name="x", datatype="FP32", shape=(3, 4))],
    )  # fmt: skip
    assert pinned.inputs[0].shape == (3, 4)
    for wrong in (
        TensorSpec(name="z", datatype="FP32", shape=(-1, 4)),
        TensorSpec(name="x", datatype="INT64", shape=(-1, 4)),
        TensorSpec(name="x", datatype="FP32", shape=(-1, 5)),
    ):
        with pytest.raises(LoadError):
            load_runtime(models["add"], "onnx", inference_threads=1, declared_inputs=[wrong])


def test_onnx_that_fails_at_run_loads(models: dict[str, Path]) -> None:
    rt = load_runtime(models["warmup_fails"], "onnx", inference_threads=1)
    assert rt.inputs[0].is_static
    with pytest.raises(ExecutionError, match="out of data bounds|indices"):
        rt.run({"x": np.zeros(2, np.float32)}, ["y"])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_corrupt_and_missing_files_fail_to_load(models: dict[str, Path], fmt: str, tmp_path: Path) -> None:
    with pytest.raises(LoadError) as info:
        load_runtime(models["corrupt"], fmt, inference_threads=1)
    assert str(info.value) and "\n" not in str(info.value)
    with pytest.raises(LoadError, match="does not exist"):
        load_runtime(tmp_path / "nope", fmt, inference_threads=1)


def test_unknown_format() -> None:
    with pytest.raises(LoadError, match="unknown model format"):
        load_runtime(__file__, "tensorflow", inference_threads=1)


# ---- TorchScript ---------------------------------------------------------------


def test_torchscript_default_specs_and_run(models: dict[str, Path]) -> None:
    import torch

    rt = load_runtime(models["ts_add"], "torchscript", inference_threads=1)
    assert rt.format == "torchscript"
    assert [s.to_json() for s in rt.inputs] == [{"name": "x", "datatype": "FP32", "shape": []}]
    assert [s.to_json() for s in rt.outputs] == [{"name": "OUTPUT__0", "datatype": "FP32", "shape": []}]
    assert rt.inputs[0].any_shape and rt.outputs[0].any_shape
    assert torch.get_num_threads() == 1
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    read_only = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(rt.run({"x": read_only}, ["OUTPUT__0"])["OUTPUT__0"], x * 2 + 1)


def test_torchscript_declared_specs(models: dict[str, Path]) -> None:
    declared_in = parse_specs_json('[{"name": "INPUT__0", "datatype": "FP64", "shape": [-1, 2]}]', empty_shape_is_any=True)
    declared_out = parse_specs_json('[{"name": "doubled", "datatype": "FP64", "shape": []}]', empty_shape_is_any=True)
    rt = load_runtime(
        models["ts_add"], "torchscript", inference_threads=1, declared_inputs=declared_in, declared_outputs=declared_out
    )
    assert rt.inputs[0] == TensorSpec(name="INPUT__0", datatype="FP64", shape=(-1, 2))
    assert rt.outputs[0].name == "doubled" and rt.outputs[0].any_shape
    out = rt.run({"INPUT__0": np.ones((1, 2), np.float64)}, ["doubled"])["doubled"]
    assert out.dtype == np.float64 and out.tolist() == [[3.0, 3.0]]
    too_many = declared_in + [TensorSpec(name="b", datatype="FP32", shape=())]
    with pytest.raises(LoadError, match="inputs declared"):
        load_runtime(models["ts_add"], "torchscript", inference_threads=1, declared_inputs=too_many)


# ---- probe CLI --------------------------------------------------------------------


def test_probe_onnx_ok(models: dict[str, Path]) -> None:
    code, answer, _ = run_probe("--format", "onnx", str(models["add"]))
    assert code == 0
    assert answer["ok"] is True
    assert answer["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert answer["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]


def test_probe_torchscript_with_declared_specs(models: dict[str, Path]) -> None:
    inputs = json.dumps([{"name": "x", "datatype": "FP32", "shape": [-1, 3]}])
    code, answer, _ = run_probe("--format", "torchscript", str(models["ts_add"]), "--inputs-json", inputs)
    assert code == 0, answer
    assert answer["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert answer["outputs"] == [{"name": "OUTPUT__0", "datatype": "FP32", "shape": []}]


def test_probe_failures(models: dict[str, Path]) -> None:
    code, answer, _ = run_probe("--format", "onnx", str(models["corrupt"]))
    assert code == 1 and answer["ok"] is False
    assert "protobuf" in str(answer["error"]).lower() or "load" in str(answer["error"]).lower()
    code, answer, _ = run_probe("--format", "onnx", str(models["add"]), "--inputs-json", "[{")
    assert code == 1 and answer["ok"] is False and "bad declared specs" in str(answer["error"])
    # a model that loads but cannot run passes the probe: the worker's warm-up catches it
    code, answer, _ = run_probe("--format", "onnx", str(models["warmup_fails"]))
    assert code == 0 and answer["ok"] is True
