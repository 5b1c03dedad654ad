"""KServe V2 REST inference through real processes: a control plane with --http-listen, one agent, and a
standalone gateway with --http-listen.

`tritonclient.http`, sync and aio, JSON and binary tensors (in its own process,
tests/tools/triton_http_call.py), answers bit-exact to gRPC ModelInfer for the
same input: FP32 and INT64 each way ("mix", tests/modelbuild.py onnx_two_types)
and BYTES ("strings"). Raw HTTP (urllib, as curl would send it) for the error
statuses: 400 naming the input with expected and got, 401, 403, 404, 429 with
Retry-After (the traffic limit's and a full worker queue's), 504 for a deadline.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cluster import ROOT, Cluster, authed_channel, wait_until
from gatewayproc import start_gateway
from modelbuild import onnx_slow, onnx_string_identity, onnx_two_types

from modelfleet.inference import grpc_service_pb2 as v2
from modelfleet.inference import grpc_service_pb2_grpc as v2_grpc
from modelfleet.v1 import deployments_pb2 as dpb

TRITON_HTTP = ROOT / "tests" / "tools" / "triton_http_call.py"
X = np.array([[0.1, -2.5e-8, 3.4e38, -0.0], [1e-45, 7.0, -1.5, 2.0 / 3.0]], dtype=np.float32)
IDS = np.array([0, -1, 2**62 + 12345, -(2**63) + 1], dtype=np.int64)
TEXT = np.array([b"hello", b"", "\u00e9t\u00e9".encode(), b"tab\there"], dtype=np.object_)  # onnxruntime strings are UTF-8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, str]]:
    root = tmp_path_factory.mktemp("rest-infer")
    c = Cluster(root, heartbeat=0.5, node_timeout=30)
    try:
        c.start_control_plane(extra_args=["--http-listen", "127.0.0.1:0"])
        rest = c.rest_endpoint()
        c.start_agent("node-a", cpus=8)
        c.wait_nodes(1)
        models = root / "models"
        models.mkdir()
        c.upload(onnx_two_types(models / "mix.onnx"), "mix")
        c.upload(onnx_string_identity(models / "strings.onnx"), "strings")
        for name in ("mix", "strings"):
            req = dpb.StartDeploymentRequest(deployment_id=name, model_id=name, wait_for=dpb.WAIT_FOR_STARTED)
            req.timeout.FromSeconds(90)
            c.deployments.StartDeployment(req, timeout=120)
        yield c, str(rest)
    finally:
        c.close()


def _grpc_raw(c: Cluster, model: str, tensors: dict[str, np.ndarray]) -> list[bytes]:
    req = v2.ModelInferRequest(model_name=model)
    for name, array in tensors.items():
        datatype = "BYTES" if array.dtype == np.object_ else {"float32": "FP32", "int64": "INT64"}[str(array.dtype)]
        req.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if datatype == "BYTES":
            req.raw_input_contents.append(b"".join(len(v).to_bytes(4, "little") + v for v in array.ravel()))
        else:
            req.raw_input_contents.append(array.tobytes())
    with authed_channel(c.addr, c.token) as channel:
        reply = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=30)
    return list(reply.raw_output_contents)


def _triton_http(url: str, model: str, tensors: dict[str, np.ndarray], outputs: list[str], tmp: Path, *flags: str,
                 token: str) -> dict[str, Any]:
    args = ["infer", "--url", url, "--model", model, "--out-dir", str(tmp), "--token", token, *flags]
    for name, array in tensors.items():
        np.save(tmp / f"in-{name}.npy", array, allow_pickle=True)
        args += ["--input", f"{name}={tmp / f'in-{name}.npy'}"]
    for name in outputs:
        args += ["--output", name]
    result = subprocess.run([sys.executable, str(TRITON_HTTP), *args], capture_output=True, text=True, timeout=120, cwd=tmp)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def _bytes_raw(array: np.ndarray) -> bytes:
    return b"".join(len(v).to_bytes(4, "little") + bytes(v) for v in array.ravel())


@pytest.mark.parametrize("flags", [(), ("--json",), ("--aio",), ("--aio", "--json")], ids=["sync-binary", "sync-json",
                                                                                          "aio-binary", "aio-json"])
def test_tritonclient_http_answers_bit_exact_like_grpc(cluster: tuple[Cluster, str], tmp_path: Path, flags: tuple[str, ...]) -> None:
    c, rest = cluster
    expected = _grpc_raw(c, "mix", {"x": X, "ids": IDS})
    out = _triton_http(rest, "mix", {"x": X, "ids": IDS}, ["y", "k"], tmp_path, *flags, token=c.token)
    assert "outputs" in out, out
    assert out["live"] is True and out["ready"] is True
    y, k = np.load(out["outputs"]["y"]), np.load(out["outputs"]["k"])
    assert (y.dtype, y.shape, k.dtype, k.shape) == (np.float32, (2, 4), np.int64, (4,))
    assert [y.tobytes(), k.tobytes()] == expected
    assert k[2] == 2**62 + 12346


@pytest.mark.parametrize("flags", [(), ("--aio",)], ids=["sync", "aio"])
def test_bytes_tensors_answer_like_grpc(cluster: tuple[Cluster, str], tmp_path: Path, flags: tuple[str, ...]) -> None:
    c, rest = cluster
    expected = _grpc_raw(c, "strings", {"x": TEXT})
    out = _triton_http(rest, "strings", {"x": TEXT}, ["y"], tmp_path, *flags, token=c.token)
    assert "outputs" in out, out
    y = np.load(out["outputs"]["y"], allow_pickle=True)
    assert _bytes_raw(y) == expected[0] == _bytes_raw(TEXT)


def test_unlisted_outputs_default_to_binary_as_tritonclient_asks(cluster: tuple[Cluster, str], tmp_path: Path) -> None:
    c, rest = cluster
    out = _triton_http(rest, "mix", {"x": X, "ids": IDS}, [], tmp_path, token=c.token)  # no outputs: binary_data_output
    assert sorted(out["outputs"]) == ["k", "y"]
    assert np.load(out["outputs"]["y"]).tobytes() == _grpc_raw(c, "mix", {"x": X, "ids": IDS})[0]


def _post(url: str, body: dict[str, Any] | bytes, *, token: str = "", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=all_headers, method="POST"), timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _mix_body(x_type: str = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": x_type, "data": [1, 2, 3, 4]},
                       {"name": "ids", "shape": [1], "datatype": "INT64", "data": [41]}]}


def test_curl_shaped_json_call_and_its_error_statuses(cluster: tuple[Cluster, str]) -> None:
    c, rest = cluster
    url = f"http://{rest}/v2/models/mix/infer"
    status, headers, body = _post(url, {**_mix_body(), "id": "req-7"}, token=c.token)
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["id"] == "req-7" and doc["model_name"] == "mix"
    assert {o["name"]: o["data"] for o in doc["outputs"]} == {"y": [2.0, 4.0, 6.0, 8.0], "k": [42]}
    assert _post(f"http://{rest}/v2/models/mix/versions/1/infer", _mix_body(), token=c.token)[0] == 200

    status, _, body = _post(url, _mix_body("INT32"), token=c.token)
    assert status == 400
    assert json.loads(body)["error"] == "input 'x': datatype mismatch, expected FP32, got INT32"
    status, _, body = _post(url, {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2]}]}, token=c.token)
    assert status == 400 and "input 'x'" in json.loads(body)["error"]
    status, _, body = _post(url, b"{not json", token=c.token)
    assert status == 400 and "not JSON" in json.loads(body)["error"]

    status, _, body = _post(url, _mix_body())
    assert status == 401 and "Bearer" in json.loads(body)["error"]
    viewer = c.create_key("viewer", name="rest viewer").token
    status, _, body = _post(url, _mix_body(), token=viewer)
    assert status == 403, body
    status, _, body = _post(f"http://{rest}/v2/models/nosuch/infer", _mix_body(), token=c.token)
    assert status == 404 and "nosuch" in json.loads(body)["error"]


def test_a_deadline_in_the_timeout_parameter_or_header_ends_504(cluster: tuple[Cluster, str], tmp_path: Path) -> None:
    c, rest = cluster
    url = f"http://{rest}/v2/models/mix/infer"
    status, _, body = _post(url, {**_mix_body(), "parameters": {"timeout": 1}}, token=c.token)  # 1 µs
    assert status == 504 and "deadline" in json.loads(body)["error"].lower(), body
    status, _, body = _post(url, _mix_body(), token=c.token, headers={"Timeout": "0.000001"})
    assert status == 504, body
    status, _, body = _post(url, _mix_body(), token=c.token, headers={"Timeout": "soon"})
    assert status == 400 and "Timeout header" in json.loads(body)["error"]
    # tritonclient's own timeout (microseconds) is honoured the same way
    out = _triton_http(rest, "mix", {"x": X, "ids": IDS}, ["y"], tmp_path, "--timeout-us", "1", token=c.token)
    assert out["error"]["status"] == "504", out


def test_the_traffic_limit_answers_429_with_retry_after_and_counts(cluster: tuple[Cluster, str]) -> None:
    c, rest = cluster
    update = dpb.UpdateDeploymentRequest(deployment_id="strings", spec=dpb.StartDeploymentRequest(traffic_limit_qps=0.01))
    update.update_mask.paths.append("traffic_limit_qps")
    c.deployments.UpdateDeployment(update, timeout=10)
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
    try:
        # a burst of 2 passes, then one call per 100 s
        answers = [_post(f"http://{rest}/v2/models/strings/infer", body, token=c.token) for _ in range(4)]
        refused = [(headers, json.loads(raw)) for status, headers, raw in answers if status == 429]
        assert refused, [a[0] for a in answers]
        headers, error = refused[0]
        assert 1 <= int(headers["Retry-After"]) <= 100
        assert "traffic limit" in error["error"]
        stats = c.deployments.GetDeploymentStats(dpb.GetDeploymentStatsRequest(deployment_id="strings"), timeout=10)
        assert stats.gateway.rejected_execution_count >= len(refused)
    finally:
        update.spec.traffic_limit_qps = 0
        c.deployments.UpdateDeployment(update, timeout=10)


def test_a_full_worker_queue_answers_429_with_the_workers_retry_after(cluster: tuple[Cluster, str], tmp_path: Path) -> None:
    c, rest = cluster
    c.upload(onnx_slow(tmp_path / "slow.onnx"), "slow")
    req = dpb.StartDeploymentRequest(deployment_id="slow", model_id="slow", queue_capacity=1, model_threads=1,
                                     wait_for=dpb.WAIT_FOR_STARTED)
    req.timeout.FromSeconds(90)
    c.deployments.StartDeployment(req, timeout=120)
    body = {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _post(f"http://{rest}/v2/models/slow/infer", body, token=c.token), range(6)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1, statuses  # one running, one queued, the rest refused
    assert set(statuses) <= {200, 429}, statuses
    for status, headers, raw in answers:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            assert "queue is full (capacity 1)" in json.loads(raw)["error"]
    c.deployments.StopDeployment(dpb.StopDeploymentRequest(deployment_id="slow"), timeout=60)


def test_openapi_describes_the_infer_route(cluster: tuple[Cluster, str]) -> None:
    _, rest = cluster
    with urllib.request.urlopen(f"http://{rest}/openapi.json", timeout=10) as resp:
        doc = json.loads(resp.read())
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        op = doc["paths"][path]["post"]
        assert "inputs" in op["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert {"200", "400", "401", "403", "404", "429", "503", "504"} <= set(op["responses"])


def test_a_standalone_gateway_serves_rest_v2_on_its_http_listen(cluster: tuple[Cluster, str], tmp_path: Path) -> None:
    c, _ = cluster
    gw = start_gateway(c, "rest", processes=2, extra_args=("--http-listen", "127.0.0.1:0"))
    try:
        rest = f"127.0.0.1:{gw.http_port}"
        key = c.create_key("inference", name="rest caller").token
        expected = _grpc_raw(c, "mix", {"x": X, "ids": IDS})

        def served() -> bool:
            status, _, _ = _post(f"http://{rest}/v2/models/mix/infer", _mix_body(), token=key)
            return status == 200

        wait_until(served, timeout=60, what="the gateway's REST port to route 'mix'")
        out = _triton_http(rest, "mix", {"x": X, "ids": IDS}, ["y", "k"], tmp_path, token=key)
        assert [np.load(out["outputs"]["y"]).tobytes(), np.load(out["outputs"]["k"]).tobytes()] == expected, out
        status, _, body = _post(f"http://{rest}/v2/models/mix/infer", _mix_body())
        assert status == 401, body
        status, _, body = _post(f"http://{rest}/v2/models/mix/infer", _mix_body("INT32"), token=key)
        assert status == 400 and "expected FP32, got INT32" in json.loads(body)["error"]
        with urllib.request.urlopen(f"http://{rest}/v2/health/ready", timeout=10) as resp:
            assert resp.status == 200
    finally:
        gw.stop()


def test_grpc_still_refuses_what_rest_refuses(cluster: tuple[Cluster, str]) -> None:
    c, _ = cluster
    req = v2.ModelInferRequest(model_name="mix")
    req.inputs.add(name="x", datatype="INT32", shape=[1, 4])
    req.inputs.add(name="ids", datatype="INT64", shape=[1])
    req.raw_input_contents.extend([b"\0" * 16, b"\0" * 8])
    with authed_channel(c.addr, c.token) as channel, pytest.raises(grpc.RpcError) as err:
        v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=30)
    assert err.value.details() == "input 'x': datatype mismatch, expected FP32, got INT32"  # the REST 400's words
