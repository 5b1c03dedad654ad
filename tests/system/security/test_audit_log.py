"""The audit log through a real control plane: every mutating call once,
with user, key id, method, target and outcome, refusals included; reads
are not written; no secret reaches the file; it rotates at its size."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster import Cluster, authed_channel, wait_until
from google.protobuf import field_mask_pb2
from modelbuild import onnx_add

from modelfleet.v1 import auth_pb2, auth_pb2_grpc, models_pb2
from modelfleet.v1 import deployments_pb2 as dpb
from modelfleet.v1 import deployments_pb2_grpc as dpb_grpc

V1 = "/modelfleet.v1"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, cp_args=["--audit-log-max-bytes", "4096", "--audit-log-backups", "3"])
    try:
        c.start_control_plane()
        c.start_agent("node-a", cpus=2)
        c.wait_nodes(1)
        yield c
    finally:
        c.close()


def lines(c: Cluster) -> list[dict[str, str]]:
    files = sorted((c.root / "cp").glob("audit.log*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    return [json.loads(line) for p in files for line in p.read_text().splitlines()]


def test_every_mutating_call_is_written_once_with_its_outcome(cluster: Cluster) -> None:
    c = cluster
    before = len(lines(c))  # the cluster made the agent's key
    created = c.create_key("deployer", user="dana")
    viewer = c.create_key("viewer", user="vic")
    dana = dpb_grpc.DeploymentsStub(authed_channel(c.addr, created.token))
    model = c.upload(onnx_add(c.root / "add.onnx"), "add")
    req = dpb.StartDeploymentRequest(model_id="add", instances=1, env={"SECRET_VALUE": "hunter2"}, wait_for=dpb.WAIT_FOR_STARTED)
    req.timeout.FromSeconds(60)
    dana.StartDeployment(req, timeout=90)
    dana.UpdateDeployment(dpb.UpdateDeploymentRequest(
        deployment_id="add", spec=dpb.StartDeploymentRequest(description="v2"),
        update_mask=field_mask_pb2.FieldMask(paths=["description"])), timeout=30)  # fmt: skip
    dana.ListDeployments(dpb.ListDeploymentsRequest(), timeout=10)  # a read: not written
    with pytest.raises(grpc.RpcError):
        dpb_grpc.DeploymentsStub(authed_channel(c.addr, viewer.token)).StopDeployment(dpb.StopDeploymentRequest(deployment_id="add"))
    with pytest.raises(grpc.RpcError):
        dpb_grpc.DeploymentsStub(authed_channel(c.addr, "mfk_0123456789abcdef_" + "y" * 43)).DeleteDeployment(
            dpb.DeleteDeploymentRequest(deployment_id="add"))  # fmt: skip
    dana.StopDeployment(dpb.StopDeploymentRequest(deployment_id="add", wait=True), timeout=60)
    dana.DeleteDeployment(dpb.DeleteDeploymentRequest(deployment_id="add"), timeout=30)
    auth_pb2_grpc.AuthStub(c.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=viewer.api_key.key_id))
    expected = [
        ("CreateApiKey", "admin", created.api_key.key_id, "OK"),
        ("CreateApiKey", "admin", viewer.api_key.key_id, "OK"),
        ("UploadModel", "admin", f"add:{model.version}", "OK"),
        ("StartDeployment", "dana", "add", "OK"),
        ("UpdateDeployment", "dana", "add", "OK"),
        ("StopDeployment", "anonymous", "add", "PERMISSION_DENIED"),
        ("DeleteDeployment", "anonymous", "add", "UNAUTHENTICATED"),
        ("StopDeployment", "dana", "add", "OK"),
        ("DeleteDeployment", "dana", "add", "OK"),
        ("RevokeApiKey", "admin", viewer.api_key.key_id, "OK"),
    ]

    def written() -> list[tuple[str, str, str, str]] | None:
        got = [(e["method"].rsplit("/", 1)[1], e["user"], e["target"], e["outcome"]) for e in lines(c)[before:]]
        return got if len(got) >= len(expected) else None

    assert wait_until(written, timeout=10, what="the audit lines") == expected
    entries = lines(c)[before:]
    assert entries[3]["key_id"] == created.api_key.key_id and entries[3]["method"] == f"{V1}.Deployments/StartDeployment"
    assert entries[5]["key_id"] == viewer.api_key.key_id and "manage_deployments" in entries[5]["message"]
    assert entries[6]["key_id"] == "0123456789abcdef" and entries[6]["client"] == "127.0.0.1"
    text = "".join(p.read_text() for p in (c.root / "cp").glob("audit.log*"))
    assert "hunter2" not in text and created.token not in text and "mfk_" not in text


def test_the_audit_log_rotates_at_its_size(cluster: Cluster) -> None:
    c = cluster
    for i in range(40):
        c.create_key("viewer", user=f"u{i}")
    wait_until(lambda: (c.root / "cp" / "audit.log.1").exists(), timeout=10, what="a rotated audit log")
    def all_written() -> list[dict[str, str]] | None:  # lines reach the file through the writer thread
        found = [e for e in lines(c) if e["method"].endswith("/CreateApiKey")]
        return found if len(found) >= 41 else None

    created = wait_until(all_written, timeout=10, what="41 CreateApiKey lines")
    assert len(created) == 41 and len({e["target"] for e in created}) == 41  # the agent's key and these 40, none lost
    assert not (c.root / "cp" / "audit.log.4").exists()  # --audit-log-backups 3
    assert all((c.root / "cp" / name).stat().st_size <= 4096 for name in ("audit.log", "audit.log.1"))


def test_a_read_only_key_listing_writes_nothing(cluster: Cluster) -> None:
    c = cluster
    models_before = len(lines(c))
    c.models.ListModels(models_pb2.ListModelsRequest(), timeout=10)
    assert len(lines(c)) == models_before
