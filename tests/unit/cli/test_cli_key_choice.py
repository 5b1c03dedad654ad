"""Which API key the CLI sends: a local admin.key only to the control plane that wrote it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from modelfleet.cli.client import format_rpc_error, resolve_credential, same_endpoint


def plane(root: Path, rel: str, endpoint: str, key: str) -> Path:
    data = root / rel
    data.mkdir(parents=True)
    (data / "endpoint").write_text(endpoint + "\n")
    (data / "admin.key").write_text(key + "\n")
    return data / "admin.key"


def test_the_admin_key_of_the_plane_at_addr_is_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELFLEET_DATA_DIR", raising=False)
    plane(tmp_path, ".modelfleet/control-plane", "127.0.0.1:7001", "mfk_up")
    plane(tmp_path, "cp", "127.0.0.1:7002", "mfk_cp")
    assert resolve_credential("127.0.0.1:7002") == ("mfk_cp", f"the admin key file {Path('cp/admin.key')}")
    assert resolve_credential("localhost:7001")[0] == "mfk_up"
    assert resolve_credential("127.0.0.1:7003") == ("", "")
    assert resolve_credential("127.0.0.1:7001", token="mfk_env") == ("mfk_env", "MODELFLEET_TOKEN")


def test_same_endpoint() -> None:
    assert same_endpoint("0.0.0.0:7070", "127.0.0.1")
    assert same_endpoint("[::1]:7070", "localhost:7070")
    assert not same_endpoint("127.0.0.1:7070", "127.0.0.1:7071")


class _Refused(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAUTHENTICATED

    def details(self) -> str:
        return "invalid API key"


def test_a_refusal_names_where_the_key_came_from() -> None:
    line = format_rpc_error(_Refused(), "127.0.0.1:7070", token_source="the admin key file cp/admin.key")
    assert line == "error: UNAUTHENTICATED: invalid API key (the API key sent came from the admin key file cp/admin.key)"
    assert "no API key was sent" in format_rpc_error(_Refused(), "127.0.0.1:7070")
