"""The wire contract: our `inference` package is wire-identical to Triton's
(what tritonclient.grpc speaks), and the generated code matches protos/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from modelfleet.inference import grpc_service_pb2

ROOT = Path(__file__).resolve().parents[3]
TOOL = ROOT / "tests" / "tools" / "triton_call.py"


@pytest.fixture(scope="module")
def triton_file(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path_factory.mktemp("desc") / "triton.pb"
    result = subprocess.run([sys.executable, str(TOOL), "descriptor", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["package"] == "inference"
    proto = descriptor_pb2.FileDescriptorProto()
    proto.ParseFromString(out.read_bytes())
    return proto


def _ours() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    grpc_service_pb2.DESCRIPTOR.CopyToProto(proto)
    return proto


def _field_tuple(f: descriptor_pb2.FieldDescriptorProto, oneofs: list[str]) -> tuple[object, ...]:
    oneof = oneofs[f.oneof_index] if f.HasField("oneof_index") else None
    return (f.name, f.number, f.type, f.label, f.type_name, oneof)


def _compare(ours: descriptor_pb2.DescriptorProto, theirs: descriptor_pb2.DescriptorProto, path: str) -> list[str]:
    problems = []
    our_oneofs = [o.name for o in ours.oneof_decl]
    their_oneofs = [o.name for o in theirs.oneof_decl]
    our_fields = {f.number: _field_tuple(f, our_oneofs) for f in ours.field}
    their_fields = {f.number: _field_tuple(f, their_oneofs) for f in theirs.field}
    if our_fields != their_fields:
        problems.append(f"{path}: fields differ\n  ours:   {sorted(our_fields.values())}\n  triton: {sorted(their_fields.values())}")
    their_nested = {n.name: n for n in theirs.nested_type}
    for nested in ours.nested_type:
        if nested.name not in their_nested:
            problems.append(f"{path}.{nested.name}: not in Triton's message")
        else:
            problems.extend(_compare(nested, their_nested[nested.name], f"{path}.{nested.name}"))
    return problems


def test_package_and_every_message_is_wire_identical_to_triton(triton_file: descriptor_pb2.FileDescriptorProto) -> None:
    ours = _ours()
    assert ours.package == triton_file.package == "inference"
    theirs = {m.name: m for m in triton_file.message_type}
    problems = []
    for message in ours.message_type:
        assert message.name in theirs, f"{message.name} is not a Triton message"
        problems.extend(_compare(message, theirs[message.name], message.name))
    assert not problems, "\n".join(problems)
    assert len(ours.message_type) >= 20


def test_every_method_matches_triton(triton_file: descriptor_pb2.FileDescriptorProto) -> None:
    (our_service,) = _ours().service
    their_service = next(s for s in triton_file.service if s.name == "GRPCInferenceService")
    assert our_service.name == "GRPCInferenceService"
    theirs = {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in their_service.method}
    ours = {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in our_service.method}
    assert set(ours) == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
        "ModelMetadata", "ModelInfer", "ModelStreamInfer", "ModelStatistics", "RepositoryIndex",
        "ModelConfig", "RepositoryModelLoad", "RepositoryModelUnload",
    }
    for name, signature in ours.items():
        assert theirs[name] == signature, name


def test_generated_code_matches_protos() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
