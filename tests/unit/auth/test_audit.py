"""control_plane.auth.audit: JSON lines, targets from requests and replies, rotation."""

from __future__ import annotations

import json
from pathlib import Path

from control_plane.auth.audit import AuditLog, target_of
from modelfleet.v1 import auth_pb2, deployments_pb2, models_pb2


def test_targets_name_what_the_call_acted_on() -> None:
    assert target_of(deployments_pb2.StopDeploymentRequest(deployment_id="d1")) == "d1"
    assert target_of(models_pb2.DeleteModelRequest(model_id="m", version=3)) == "m:3"
    assert target_of(object(), models_pb2.Model(model_id="up", version=2)) == "up:2"  # an upload: from its reply
    created = auth_pb2.CreateApiKeyResponse(api_key=auth_pb2.ApiKey(key_id="0123456789abcdef"), token="mfk_secret")
    assert target_of(auth_pb2.CreateApiKeyRequest(user="bob"), created) == "0123456789abcdef"
    assert target_of(deployments_pb2.ListDeploymentsRequest()) == ""


def test_lines_are_json_and_the_file_rotates(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, max_bytes=2048, backups=2)
    for i in range(40):
        log.record(method="/m", user="u", key_id="k", target=f"d{i}", outcome="OK", message="", client="127.0.0.1")
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    lines = [json.loads(line) for p in tmp_path.iterdir() for line in p.read_text().splitlines()]
    assert {tuple(sorted(line)) for line in lines} == {("client", "key_id", "message", "method", "outcome", "target", "time", "user")}
    assert all(line["time"].endswith("Z") for line in lines)
    assert "d39" in path.read_text()  # the newest is in the live file
