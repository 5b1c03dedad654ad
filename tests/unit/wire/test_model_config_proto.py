"""Our model_config.proto against tritonclient's model_config_pb2: every
message, field and enum value we declare has Triton's name, number, type and
label (we declare only what modelfleet fills), and the ModelConfig we build
(modelfleet.wire.triton) reads back in tritonclient as Triton's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from modelfleet.inference import model_config_pb2
from modelfleet.v1 import common_pb2
from modelfleet.wire import triton

ROOT = Path(__file__).resolve().parents[3]
TOOL = ROOT / "tests" / "tools" / "triton_call.py"


@pytest.fixture(scope="module")
def theirs(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path_factory.mktemp("desc") / "model_config.pb"
    cmd = [sys.executable, str(TOOL), "descriptor", "--file", "model_config", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["package"] == "inference"
    proto = descriptor_pb2.FileDescriptorProto()
    proto.ParseFromString(out.read_bytes())
    return proto


def _fields(message: descriptor_pb2.DescriptorProto) -> dict[int, tuple[object, ...]]:
    oneofs = [o.name for o in message.oneof_decl]
    return {
        f.number: (f.name, f.type, f.label, f.type_name, oneofs[f.oneof_index] if f.HasField("oneof_index") else None)
        for f in message.field
    }


def _enum_problems(ours: list[descriptor_pb2.EnumDescriptorProto], theirs: list[descriptor_pb2.EnumDescriptorProto], path: str) -> list[str]:
    by_name = {e.name: {v.name: v.number for v in e.value} for e in theirs}
    problems = []
    for enum in ours:
        values = {v.name: v.number for v in enum.value}
        if enum.name not in by_name or values.items() - by_name[enum.name].items():
            problems.append(f"{path}{enum.name}: {values} not within Triton's {by_name.get(enum.name)}")
    return problems


def _problems(ours: descriptor_pb2.DescriptorProto, theirs: descriptor_pb2.DescriptorProto, path: str) -> list[str]:
    mine, triton_fields = _fields(ours), _fields(theirs)
    problems = [f"{path}.{mine[n][0]} (#{n}): ours {mine[n]}, Triton's {triton_fields.get(n)}" for n in mine if mine[n] != triton_fields.get(n)]
    problems += _enum_problems(list(ours.enum_type), list(theirs.enum_type), f"{path}.")
    nested = {m.name: m for m in theirs.nested_type}
    for inner in ours.nested_type:
        if inner.name not in nested:
            problems.append(f"{path}.{inner.name}: not in Triton's message")
        else:
            problems += _problems(inner, nested[inner.name], f"{path}.{inner.name}")
    return problems


def test_every_declared_message_field_and_enum_value_is_tritons(theirs: descriptor_pb2.FileDescriptorProto) -> None:
    ours = descriptor_pb2.FileDescriptorProto()
    model_config_pb2.DESCRIPTOR.CopyToProto(ours)
    assert ours.package == theirs.package == "inference"
    messages = {m.name: m for m in theirs.message_type}
    problems = _enum_problems(list(ours.enum_type), list(theirs.enum_type), "")
    for message in ours.message_type:
        if message.name not in messages:
            problems.append(f"{message.name}: not a Triton message")
        else:
            problems += _problems(message, messages[message.name], message.name)
    assert not problems, "\n".join(problems)
    assert {m.name for m in ours.message_type} >= {"ModelConfig", "ModelInput", "ModelOutput", "ModelDynamicBatching", "ModelInstanceGroup"}


def test_model_config_leaves_out_the_batch_dimension_only_when_batching() -> None:
    x = common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 4])
    s = common_pb2.TensorSpec(name="s", datatype="BYTES", shape=[-1])
    batched = triton.model_config(name="d", platform="onnxruntime_onnx", inputs=[x, s], outputs=[x], max_batch_size=8,
                                  max_queue_delay_us=500, instances=[triton.Instances(name="v", count=3)])  # fmt: skip
    assert batched.backend == "onnxruntime" and batched.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in batched.input] == [
        ("x", model_config_pb2.TYPE_FP32, [4]), ("s", model_config_pb2.TYPE_STRING, [])]  # fmt: skip
    assert batched.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert batched.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.name, g.kind, g.count) for g in batched.instance_group] == [("v", model_config_pb2.ModelInstanceGroup.KIND_CPU, 3)]
    plain = triton.model_config(name="d", platform="pytorch_libtorch", inputs=[x], outputs=[x])
    assert plain.backend == "pytorch" and plain.max_batch_size == 0 and list(plain.input[0].dims) == [-1, 4]
    assert plain.WhichOneof("scheduling_choice") is None
