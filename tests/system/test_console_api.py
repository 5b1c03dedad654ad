"""The console's JSON API (/api/v1) and its server-sent events, through a real control plane and agent."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, wait_until
from modelbuild import onnx_add

from modelfleet.v1 import auth_pb2, auth_pb2_grpc


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = None) -> tuple[int, Any]:
        key = self.token if token is None else token
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def events(self, path: str, into: queue.Queue[dict[str, Any]]) -> threading.Thread:
        """Read the SSE stream at path in a thread, putting each message's JSON into `into`."""
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.token}"})
        resp = urllib.request.urlopen(req, timeout=120)
        assert resp.headers["Content-Type"].startswith("text/event-stream")

        def read() -> None:
            with resp:
                for raw in resp:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("data: "):
                        into.put(json.loads(line[len("data: "):]))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Api]]:
    root = tmp_path_factory.mktemp("console-api")
    cluster = Cluster(root)
    try:
        cluster.start_control_plane(extra_args=["--http-listen", "127.0.0.1:0"])
        endpoint = cluster.rest_endpoint()
        cluster.start_agent("a1")
        cluster.wait_nodes(1, timeout=60)
        cluster.upload(onnx_add(root / "add.onnx"), "adder")
        yield cluster, Api(f"http://{endpoint}", cluster.token)
    finally:
        cluster.close()


def _wait_status(api: Api, name: str, status: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        code, body = api.call("GET", f"/api/v1/deployments/{name}")
        return body if code == 200 and body["status"] == status else None

    return wait_until(reached, timeout=90, what=f"{name} {status}")


def test_whoami_models_nodes_as_json(fleet: tuple[Cluster, Api]) -> None:
    cluster, api = fleet
    status, me = api.call("GET", "/api/v1/whoami")
    assert status == 200 and me["authentication_enabled"] is True
    assert "manage_deployments" in me["privileges"]
    status, models = api.call("GET", "/api/v1/models")
    assert status == 200
    assert [(m["model_id"], m["state"]) for m in models["models"]] == [("adder", "MODEL_STATE_NORMAL")]
    status, nodes = api.call("GET", "/api/v1/nodes?page_size=10")
    assert status == 200 and nodes["nodes"][0]["node_id"] == cluster.node_id("a1")


def test_preview_start_watch_update_stop_delete(fleet: tuple[Cluster, Api]) -> None:
    _, api = fleet
    spec = {"deployment_id": "svc", "model_id": "adder", "instances": 1, "queue_capacity": 8}
    status, plan = api.call("POST", "/api/v1/deployments", {**spec, "dry_run": True})
    assert status == 200 and plan["dry_run"] is True
    assert plan["deployment"]["allocations"][0]["target_nodes"] == 1
    assert api.call("GET", "/api/v1/deployments/svc")[0] == 404  # a dry run changes nothing

    changes: queue.Queue[dict[str, Any]] = queue.Queue()
    api.events("/api/v1/watch/deployments", changes)
    assert changes.get(timeout=30)["deployments"] == []
    status, started = api.call("POST", "/api/v1/deployments", {**spec, "wait_for": "WAIT_FOR_STARTING"})
    assert status == 200, started
    # the list stream reports the new deployment and then its RUNNING status, no polling
    wait_until(lambda: any(d["status"] == "DEPLOYMENT_STATUS_RUNNING" for d in changes.get(timeout=60)["deployments"]),
               timeout=90, what="RUNNING on the list's event stream")

    snapshots: queue.Queue[dict[str, Any]] = queue.Queue()
    api.events("/api/v1/deployments/svc/watch", snapshots)
    assert snapshots.get(timeout=30)["deployment"]["deployment_id"] == "svc"
    status, updated = api.call("PATCH", "/api/v1/deployments/svc",
                               {"spec": {"traffic_limit_qps": 5}, "update_mask": "traffic_limit_qps"})
    assert status == 200, updated
    wait_until(lambda: snapshots.get(timeout=60)["deployment"]["traffic_limit_qps"] == 5, timeout=90,
               what="the update on the deployment's event stream")
    status, events = api.call("GET", "/api/v1/deployments/svc/events")
    assert status == 200 and events["events"]
    status, stats = api.call("GET", "/api/v1/deployments/svc/stats")
    assert status == 200 and stats["deployment_id"] == "svc"

    assert api.call("POST", "/api/v1/deployments/svc/stop", {"wait": True})[0] == 200
    _wait_status(api, "svc", "DEPLOYMENT_STATUS_STOPPED")
    assert api.call("DELETE", "/api/v1/deployments/svc")[0] == 200
    assert api.call("GET", "/api/v1/deployments/svc")[0] == 404


def test_errors_name_the_field_and_use_the_one_mapping(fleet: tuple[Cluster, Api]) -> None:
    _, api = fleet
    status, body = api.call("POST", "/api/v1/deployments", {"model_id": "adder", "traffic_limit_qps": -1})
    assert status == 400 and "traffic_limit_qps" in body["error"]
    status, body = api.call("POST", "/api/v1/deployments", {"model_id": "adder", "instances": "many"})
    assert status == 400 and "instances" in body["error"]
    status, body = api.call("POST", "/api/v1/deployments", {"model_id": "nosuch"})
    assert status == 404 and "nosuch" in body["error"]
    status, body = api.call("GET", "/api/v1/deployments?colour=red")
    assert status == 400 and "colour" in body["error"]
    status, body = api.call("GET", "/api/v1/deployments/nosuch/watch")
    assert status == 404 and "nosuch" in body["error"]  # a stream that cannot start answers JSON, not events


def test_a_viewer_reads_but_may_not_change(fleet: tuple[Cluster, Api]) -> None:
    cluster, api = fleet
    viewer = cluster.create_key("viewer", user="vera").token
    status, me = api.call("GET", "/api/v1/whoami", token=viewer)
    assert status == 200 and me["privileges"] == ["monitor"] and me["user"] == "vera"
    assert api.call("GET", "/api/v1/deployments", token=viewer)[0] == 200
    status, body = api.call("POST", "/api/v1/deployments", {"model_id": "adder"}, token=viewer)
    assert status == 403 and "manage_deployments" in body["error"]
    node = cluster.node_id("a1")
    assert api.call("POST", f"/api/v1/nodes/{node}/drain", token=viewer)[0] == 403
    assert api.call("GET", "/api/v1/whoami", token="")[0] == 401


def test_the_deployment_owner_is_the_key_user(fleet: tuple[Cluster, Api]) -> None:
    cluster, api = fleet
    deployer = cluster.create_key("deployer", user="dora").token
    status, body = api.call("POST", "/api/v1/deployments",
                            {"deployment_id": "doras", "model_id": "adder", "wait_for": "WAIT_FOR_STARTING"},
                            token=deployer)
    assert status == 200, body
    assert body["deployment"]["owner"] == "dora"
    assert api.call("POST", "/api/v1/deployments/doras/stop", {"wait": True}, token=deployer)[0] == 200
    assert api.call("DELETE", "/api/v1/deployments/doras", token=deployer)[0] == 200


def test_up_prints_the_console_address_and_serves_it(tmp_path: Path) -> None:
    out = tmp_path / "up.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet.cli", "up", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
             "--no-demo", "--data-dir", str(tmp_path / "data")],
            stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            line = wait_until(lambda: _console_line(proc, out), timeout=120, what="`modelfleet up` to print the console")
            url = line.split("Console: ", 1)[1].split()[0]
            with urllib.request.urlopen(url, timeout=30) as resp:
                page = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/html") and 'src="app.js"' in page
            with urllib.request.urlopen(url.removesuffix("console/"), timeout=30) as resp:
                assert resp.url == url  # / redirects to the console
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0


def _console_line(proc: subprocess.Popen[bytes], out: Path) -> str:
    text = out.read_text(errors="replace")
    if proc.poll() is not None:
        raise AssertionError(f"modelfleet up exited {proc.returncode}:\n{text}")
    return next((line for line in text.splitlines() if line.startswith("Console: http://")), "")


def test_revoking_a_key_ends_its_open_event_stream(fleet: tuple[Cluster, Api]) -> None:
    cluster, api = fleet
    made = cluster.create_key("viewer", user="rita")
    changes: queue.Queue[dict[str, Any]] = queue.Queue()
    reader = Api(api.base, made.token).events("/api/v1/watch/deployments", changes)
    changes.get(timeout=30)
    auth_pb2_grpc.AuthStub(cluster.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=made.api_key.key_id))
    reader.join(timeout=60)
    assert not reader.is_alive(), "the revoked key's stream is still open"
    assert api.call("GET", "/api/v1/watch/deployments", token=made.token)[0] == 401


def test_mutating_calls_are_written_to_the_audit_log(fleet: tuple[Cluster, Api]) -> None:
    cluster, api = fleet
    assert api.call("POST", "/api/v1/deployments", {"deployment_id": "audited", "model_id": "adder", "dry_run": True})[0] == 200
    assert api.call("POST", "/api/v1/deployments", {"deployment_id": "audited", "model_id": "adder", "traffic_limit_qps": -1})[0] == 400
    log = cluster.root / "cp" / "audit.log"

    def lines() -> list[dict[str, Any]]:
        found = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        mine = [e for e in found if e["method"].endswith("/StartDeployment") and e["target"] == "audited"]
        return mine if len(mine) >= 2 else []

    entries = wait_until(lines, timeout=30, what="the REST calls in the audit log")
    assert [e["outcome"] for e in entries[-2:]] == ["OK", "INVALID_ARGUMENT"]
    assert entries[-1]["user"] == "admin" and entries[-1]["client"] == "127.0.0.1"
    assert "traffic_limit_qps" in entries[-1]["message"]
