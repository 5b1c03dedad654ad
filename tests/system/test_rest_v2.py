"""KServe V2 REST health and metadata through a real control plane started with --http-listen."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    cluster = Cluster(tmp_path)
    try:
        cluster.start_control_plane(extra_args=["--http-listen", "127.0.0.1:0"])
        endpoint = cluster.rest_endpoint()
        yield cluster, f"http://{endpoint}"
    finally:
        cluster.close()


@pytest.fixture
def rest(served: tuple[Cluster, str]) -> str:
    return served[1]


def _get(url: str, token: str = "") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_health_and_server_metadata_answer_over_http(rest: str) -> None:
    assert _get(f"{rest}/v2/health/live") == (200, {})
    assert _get(f"{rest}/v2/health/ready") == (200, {})
    status, meta = _get(f"{rest}/v2")
    assert status == 200
    assert meta["name"] == "modelfleet"
    assert "statistics" in meta["extensions"]  # the same list as gRPC ServerMetadata


def test_openapi_document_lists_every_served_route(rest: str) -> None:
    status, doc = _get(f"{rest}/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert {"/v2/health/live", "/v2/health/ready", "/v2"} <= set(doc["paths"])


def test_unknown_path_is_404_not_500(rest: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{rest}/v2/no/such/route", timeout=10)
    assert err.value.code == 404


def test_model_routes_need_a_key_and_answer_errors_as_json(served: tuple[Cluster, str]) -> None:
    cluster, rest = served
    status, body = _get(f"{rest}/v2/models/nosuch")
    assert status == 401
    assert "Bearer" in body["error"]
    status, body = _get(f"{rest}/v2/models/nosuch", token="mfk_0000000000000000_bogus")
    assert status == 401
    for suffix in ("", "/ready", "/config", "/stats", "/versions/1"):
        status, body = _get(f"{rest}/v2/models/nosuch{suffix}", token=cluster.token)
        assert status == 404, suffix
        assert "nosuch" in body["error"]
