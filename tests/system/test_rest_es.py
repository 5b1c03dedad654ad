"""The Elasticsearch-shaped management API through a real control plane (--http-listen) and a real agent:
the seed's `_start` answer field by field, stop, update, stats, infer, every error status with its
Elasticsearch body, and every REST route of the table refused to a viewer key exactly where the access
table says so."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cluster import Cluster, wait_until
from modelbuild import onnx_add

from control_plane.auth.access import METHOD_ACCESS, ROLES
from modelfleet.v1 import common_pb2

_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@dataclass
class Es:
    cluster: Cluster
    url: str
    node_id: str
    model_bytes: int

    def call(self, method: str, path: str, body: Any = None, *, auth: str | None = None) -> tuple[int, Any]:
        """(status, JSON answer); `auth` is the whole Authorization header (default: ApiKey <admin key>)."""
        header = f"ApiKey {self.cluster.token}" if auth is None else auth
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": header, "Content-Type": "application/json"} if header else {})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def stream_status(self, path: str, *, auth: str) -> tuple[int, Any]:
        """(status, JSON error or None) of a server-sent-events route, without waiting for its endless body."""
        req = urllib.request.Request(self.url + path, headers={"Authorization": auth})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                return resp.status, None
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def es(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Es]:
    root = tmp_path_factory.mktemp("es")
    cluster = Cluster(root)
    try:
        cluster.start_control_plane(extra_args=["--http-listen", "127.0.0.1:0"])
        endpoint = cluster.rest_endpoint()
        cluster.start_agent("a", cpus=4)
        (node,) = cluster.wait_nodes(1, timeout=60)
        model = onnx_add(root / "add.onnx")
        for model_id in ("add", "seed"):
            cluster.upload(model, model_id)
        yield Es(cluster, f"http://{endpoint}", node.node_id, model.stat().st_size)
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def add(es: Es) -> dict[str, Any]:
    """Deployment `add`, started through REST."""
    status, answer = es.call("POST", "/_ml/trained_models/add/deployment/_start?wait_for=started&timeout=1m")
    assert status == 200, answer
    return answer


def _is_es_error(got: int, body: Any, status: int, kind: str) -> str:
    """The reason, after checking the HTTP status and Elasticsearch's error shape."""
    assert got == status, (got, body)
    assert set(body) == {"error", "status"} and body["status"] == status, body
    error = body["error"]
    assert error["type"] == kind and error["root_cause"] == [{"type": kind, "reason": error["reason"]}], body
    return str(error["reason"])


def test_the_seed_start_call_answers_the_seed_shape_and_stop_stops_it(es: Es) -> None:
    status, answer = es.call("POST", "/_ml/trained_models/seed/deployment/_start?wait_for=started&timeout=1m"
                                     "&inference_threads=1&model_threads=1&queue_capacity=64")
    assert status == 200, answer
    assert list(answer) == ["allocation"]
    alloc = answer["allocation"]
    assert list(alloc) == ["task_parameters", "routing_table", "allocation_state", "start_time"]
    assert alloc["task_parameters"] == {"model_id": "seed", "model_bytes": es.model_bytes, "inference_threads": 1,
                                        "model_threads": 1, "queue_capacity": 64, "model_version": 1}
    assert alloc["routing_table"] == {es.node_id: {"routing_state": "started", "reason": ""}}
    assert alloc["allocation_state"] in ("started", "fully_allocated")  # one node: started there = all of them
    assert _RFC3339.match(alloc["start_time"]), alloc["start_time"]

    status, answer = es.call("POST", "/_ml/trained_models/seed/deployment/_stop?timeout=30s")
    assert (status, answer) == (200, {"stopped": True})
    assert es.cluster.get("seed").status == common_pb2.DEPLOYMENT_STATUS_STOPPED


def test_infer_takes_the_tensor_form(es: Es, add: dict[str, Any]) -> None:
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 1, 1, 1], [0, 0, 0, 0]]}]}
    status, answer = es.call("POST", "/_ml/trained_models/add/deployment/_infer", body)
    assert status == 200, answer
    (result,) = answer["inference_results"]
    assert result["model_id"] == "add"
    assert result["outputs"] == [{"name": "y", "shape": [2, 4], "datatype": "FP32", "data": [2, 3, 4, 5, 1, 2, 3, 4]}]
    status, answer = es.call("POST", "/_ml/trained_models/add/deployment/_infer", {"docs": [{"text_field": "hi"}]})
    assert "inputs" in _is_es_error(status, answer, 400, "illegal_argument_exception")
    bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    status, answer = es.call("POST", "/_ml/trained_models/add/deployment/_infer", bad)
    assert "'x'" in _is_es_error(status, answer, 400, "illegal_argument_exception")


def test_stats_have_elasticsearch_per_node_fields(es: Es, add: dict[str, Any]) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert es.call("POST", "/_ml/trained_models/add/deployment/_infer", body)[0] == 200

    def counted() -> dict[str, Any] | None:
        status, answer = es.call("GET", "/_ml/trained_models/add/_stats")
        assert status == 200, answer
        nodes = answer["trained_model_stats"][0]["deployment_stats"]["nodes"]
        return answer if nodes and nodes[0]["inference_count"] >= 1 else None

    answer = wait_until(counted, timeout=60, what="the worker's inference count in _stats")
    assert answer["count"] == 1
    (entry,) = answer["trained_model_stats"]
    assert entry["model_id"] == "add" and entry["model_size_stats"] == {"model_size_bytes": es.model_bytes}
    stats = entry["deployment_stats"]
    assert (stats["deployment_id"], stats["model_id"], stats["state"]) == ("add", "add", "running")
    assert stats["allocation_status"]["allocation_count"] == 1
    (node,) = stats["nodes"]
    assert node["node"] == {es.node_id: {"name": es.node_id}}
    assert node["routing_state"] == {"routing_state": "started", "reason": ""}
    for field in ("inference_count", "average_inference_time_ms", "number_of_pending_requests", "error_count",
                  "rejected_execution_count", "timeout_count", "start_time"):
        assert isinstance(node[field], (int, float)) and not isinstance(node[field], bool), (field, node)
    assert node["average_inference_time_ms"] > 0


def test_update_takes_elasticsearch_and_service_fields(es: Es, add: dict[str, Any]) -> None:
    status, answer = es.call("POST", "/_ml/trained_models/add/deployment/_update?wait_for=started&timeout=1m",
                             {"number_of_allocations": 1, "traffic_limit_qps": 50})
    assert status == 200, answer
    assert answer["allocation"]["routing_table"][es.node_id]["routing_state"] == "started"
    deployment = es.cluster.get("add")
    assert deployment.traffic_limit_qps == 50 and deployment.variants[0].instances == 1
    status, answer = es.call("POST", "/_ml/trained_models/add/deployment/_update", {"no_such": 1})
    assert "no_such" in _is_es_error(status, answer, 400, "illegal_argument_exception")


def test_models_list_and_get(es: Es) -> None:
    status, answer = es.call("GET", "/_ml/trained_models")
    assert status == 200 and answer["count"] == 2
    assert [m["model_id"] for m in answer["trained_model_configs"]] == ["add", "seed"]
    status, answer = es.call("GET", "/_ml/trained_models/add")
    (config,) = answer["trained_model_configs"]
    assert (config["model_type"], config["model_size_bytes"], config["input"]) == ("onnx", es.model_bytes, {"field_names": ["x"]})
    status, answer = es.call("GET", "/_ml/trained_models/nosuch")
    assert "nosuch" in _is_es_error(status, answer, 404, "resource_not_found_exception")


def test_each_error_status_has_its_elasticsearch_body(es: Es, add: dict[str, Any]) -> None:
    start = "/_ml/trained_models/{}/deployment/_start"
    status, answer = es.call("POST", start.format("add") + "?queue_capacity=lots")
    assert "queue_capacity" in _is_es_error(status, answer, 400, "illegal_argument_exception")
    status, answer = es.call("POST", start.format("nosuch"))
    assert "nosuch" in _is_es_error(status, answer, 404, "resource_not_found_exception")
    status, answer = es.call("POST", start.format("add"))
    assert "already started" in _is_es_error(status, answer, 409, "status_exception")
    status, answer = es.call("POST", start.format("add") + "?deployment_id=big&inference_threads=64")
    assert "cpus" in _is_es_error(status, answer, 429, "status_exception")
    # a worker takes far longer than 1ms to start: the wait times out and the deployment keeps starting
    status, answer = es.call("POST", start.format("add") + "?deployment_id=slow&timeout=1ms&wait_for=fully_allocated")
    assert "timed out" in _is_es_error(status, answer, 408, "elasticsearch_timeout_exception")
    assert es.call("POST", "/_ml/trained_models/slow/deployment/_stop?timeout=1m") == (200, {"stopped": True})
    status, answer = es.call("POST", "/_ml/trained_models/nosuch/deployment/_stop")
    _is_es_error(status, answer, 404, "resource_not_found_exception")
    status, answer = es.call("GET", "/_ml/trained_models/add/_stats", auth="")
    assert "Bearer" in _is_es_error(status, answer, 401, "security_exception")
    status, answer = es.call("GET", "/_ml/trained_models/add/_stats", auth="ApiKey mfk_0000000000000000_bogus")
    _is_es_error(status, answer, 401, "security_exception")


def _fill(path: str) -> str:
    return path.replace("{model_id}", "add").replace("{name}", "add").replace("{version}", "1").replace("{id}", "add")


def test_a_viewer_key_is_refused_every_route_the_access_table_denies_it(es: Es, add: dict[str, Any]) -> None:
    status, doc = es.call("GET", "/openapi.json", auth="")
    assert status == 200
    viewer = es.cluster.create_key("viewer", user="vic").token
    viewer_privileges = ROLES["viewer"]
    operations = [(method.upper(), path, op["x-modelfleet-access"]) for path, ops in doc["paths"].items()
                  for method, op in ops.items()]
    assert {p for _, p, _ in operations} >= {"/v2/health/live", "/_ml/trained_models/{model_id}/deployment/_start"}
    refused, mutating = set(), set()
    for method, path, access in operations:
        rule = METHOD_ACCESS[access]
        allowed = rule.public or not rule.any_of or bool(rule.any_of & viewer_privileges)
        body = {} if method == "POST" else None
        for scheme in ("ApiKey", "Bearer"):
            if path.endswith("/watch") or "/watch/" in path:
                status, answer = es.stream_status(_fill(path), auth=f"{scheme} {viewer}")
            else:
                status, answer = es.call(method, _fill(path), body, auth=f"{scheme} {viewer}")
            if allowed:
                assert status not in (401, 403) and status < 500, (method, path, status, answer)
            else:
                assert status == 403, (method, path, status, answer)
                assert "lacks the privilege" in json.dumps(answer)
                refused.add((method, path))
        if rule.mutating:
            mutating.add((method, path))
    assert mutating and mutating <= refused  # start, stop, update among them
    assert {p for _, p in mutating} >= {f"/_ml/trained_models/{{model_id}}/deployment/{a}" for a in ("_start", "_stop", "_update")}
    assert es.cluster.get("add").status == common_pb2.DEPLOYMENT_STATUS_RUNNING  # nothing was stopped


def test_start_body_carries_service_fields_and_the_traffic_limit_answers_429(es: Es) -> None:
    deployer = es.cluster.create_key("deployer", user="dora").token
    body = {"variants": [{"model_id": "add", "weight": 70, "env": {"GREETING": "hi"}}, {"model_id": "seed", "weight": 30}],
            "auto_stop": "2h", "traffic_limit_qps": 0.01}
    status, answer = es.call("POST", "/_ml/trained_models/svc/deployment/_start?wait_for=started&timeout=1m", body,
                             auth=f"Bearer {deployer}")
    assert status == 200, answer
    assert [(a["variant"], a["weight"]) for a in answer["allocations"]] == [("add-v1", 70), ("seed-v1", 30)]
    assert answer["allocation"] == {k: v for k, v in answer["allocations"][0].items() if k not in ("variant", "weight")}
    deployment = es.cluster.get("svc")
    assert deployment.owner == "dora"  # the REST key's user, as under gRPC
    assert (deployment.auto_stop.seconds, deployment.traffic_limit_qps) == (7200, 0.01)
    assert dict(deployment.variants[0].env) == {"GREETING": "hi"}
    infer = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
    answers = [es.call("POST", "/_ml/trained_models/svc/deployment/_infer", infer, auth=f"Bearer {deployer}")
               for _ in range(3)]
    assert answers[0][0] == 200, answers[0]
    status, refused = answers[-1]
    assert "traffic limit" in _is_es_error(status, refused, 429, "status_exception")
    assert es.call("POST", "/_ml/trained_models/svc/deployment/_stop?timeout=1m") == (200, {"stopped": True})
