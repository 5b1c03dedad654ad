"""Elasticsearch JSON shapes of allocations, models, statistics, tensors and errors (pure functions)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from control_plane import errors
from control_plane.rest.es import shaping, tensors
from control_plane.rest.es.errors import es_error, es_status
from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.v1 import common_pb2, deployments_pb2, models_pb2


def _alloc(variant: str = "m-v1") -> deployments_pb2.Allocation:
    alloc = deployments_pb2.Allocation(
        task_parameters=deployments_pb2.TaskParameters(model_id="m", model_bytes=289, inference_threads=2, model_threads=1,
                                                       queue_capacity=64, model_version=3),
        allocation_state=common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED, variant=variant, weight=100, target_nodes=1)
    alloc.routing_table["node-b"].routing_state = common_pb2.ROUTING_STATE_STARTED
    alloc.routing_table["node-a"].CopyFrom(deployments_pb2.RoutingEntry(routing_state=common_pb2.ROUTING_STATE_FAILED,
                                                                        reason="exit code 1"))
    alloc.start_time.FromJsonString("2026-01-02T03:04:05.123456789Z")
    return alloc


def test_the_allocation_answer_is_the_seed_shape_with_lower_case_states_and_numbers() -> None:
    deployment = deployments_pb2.Deployment(deployment_id="m", allocations=[_alloc()])
    answer = shaping.allocation_answer(deployment)
    assert answer == {"allocation": {
        "task_parameters": {"model_id": "m", "model_bytes": 289, "inference_threads": 2, "model_threads": 1,
                            "queue_capacity": 64, "model_version": 3},
        "routing_table": {"node-a": {"routing_state": "failed", "reason": "exit code 1"},
                          "node-b": {"routing_state": "started", "reason": ""}},
        "allocation_state": "fully_allocated",
        "start_time": "2026-01-02T03:04:05.123Z",
    }}
    assert list(answer["allocation"]["routing_table"]) == ["node-a", "node-b"]  # sorted: stable answers


def test_several_variants_are_each_listed_with_name_and_weight() -> None:
    deployment = deployments_pb2.Deployment(allocations=[_alloc("a"), _alloc("b")])
    answer = shaping.allocation_answer(deployment)
    assert "variant" not in answer["allocation"]
    assert [(a["variant"], a["weight"]) for a in answer["allocations"]] == [("a", 100), ("b", 100)]


def test_an_unset_start_time_is_empty() -> None:
    assert shaping.allocation(deployments_pb2.Allocation())["start_time"] == ""


def test_model_config_names_inputs_as_elasticsearch_field_names() -> None:
    model = models_pb2.Model(model_id="m", version=2, format=common_pb2.MODEL_FORMAT_ONNX, model_bytes=10,
                             state=common_pb2.MODEL_STATE_NORMAL,
                             inputs=[common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 4])])
    model.created_at.FromMilliseconds(1500)
    config = shaping.model_config(model)
    assert (config["model_type"], config["state"], config["create_time"], config["input"]) == \
        ("onnx", "normal", 1500, {"field_names": ["x"]})
    assert config["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]


def test_deployment_stats_carry_elasticsearch_per_node_fields() -> None:
    deployment = deployments_pb2.Deployment(deployment_id="d", status=common_pb2.DEPLOYMENT_STATUS_RUNNING,
                                            allocations=[_alloc()])
    stats = deployments_pb2.GetDeploymentStatsResponse(deployment_id="d")
    node = stats.nodes.add(node_id="node-b", routing_state=common_pb2.ROUTING_STATE_STARTED)
    node.stats.inference_count = 7
    node.stats.average_inference_time_ms = 1.5
    node.stats.start_time.FromMilliseconds(2000)
    stats.total.inference_count = 7
    out = shaping.deployment_stats(deployment, stats)
    assert (out["state"], out["threads_per_allocation"], out["number_of_allocations"], out["inference_count"]) == \
        ("running", 2, 1, 7)
    assert out["allocation_status"] == {"allocation_count": 1, "target_allocation_count": 1, "state": "fully_allocated"}
    (n,) = out["nodes"]
    assert n["node"] == {"node-b": {"name": "node-b"}}
    assert n["routing_state"] == {"routing_state": "started", "reason": ""}
    assert (n["inference_count"], n["average_inference_time_ms"], n["start_time"], n["timeout_count"]) == (7, 1.5, 2000, 0)
    assert "last_access" not in n
    json.dumps(out)  # plain JSON


def test_infer_request_takes_nested_or_flat_data() -> None:
    req = tensors.infer_request("m", {"inputs": [
        {"name": "x", "shape": [2, 2], "datatype": "fp32", "data": [[1, 2], [3, 4]]},
        {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
    ], "outputs": [{"name": "y"}]})
    assert req.model_name == "m"
    assert req.inputs[0].datatype == "FP32"
    assert np.frombuffer(req.raw_input_contents[0], "<f4").tolist() == [1, 2, 3, 4]
    assert req.raw_input_contents[1] == struct.pack("<I", 2) + b"hi"
    assert [o.name for o in req.outputs] == ["y"]


@pytest.mark.parametrize(("body", "named"), [
    ({"docs": [{"text_field": "x"}]}, "inputs"),
    ({"inputs": []}, "inputs"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}, "FP8"),
    ({"inputs": [{"name": "x", "shape": ["a"], "datatype": "FP32", "data": [1]}]}, "shape"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "data"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": ["a"]}]}, "'x'"),
    ({"inputs": [], "parameters": {}}, "parameters"),
])
def test_bad_infer_bodies_name_what_is_wrong(body: dict[str, object], named: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=named):
        tensors.infer_request("m", body)


def test_infer_answer_decodes_raw_and_typed_outputs() -> None:
    resp = pb.ModelInferResponse(model_name="m", model_version="1")
    resp.outputs.add(name="y", datatype="FP32", shape=[1, 2])
    resp.outputs.add(name="s", datatype="BYTES", shape=[1])
    resp.raw_output_contents.append(np.array([0.5, float("nan")], np.float32).tobytes())
    resp.raw_output_contents.append(struct.pack("<I", 2) + b"ok")
    (result,) = tensors.infer_answer(resp)["inference_results"]
    assert result["outputs"] == [{"name": "y", "shape": [1, 2], "datatype": "FP32", "data": [0.5, "NaN"]},
                                 {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["ok"]}]
    typed = pb.ModelInferResponse(model_name="m")
    typed.outputs.add(name="i", datatype="INT64", shape=[2]).contents.int64_contents.extend([1, 2])
    assert tensors.infer_answer(typed)["inference_results"][0]["outputs"][0]["data"] == [1, 2]


@pytest.mark.parametrize(("error", "status", "kind"), [
    (errors.InvalidArgument("x"), 400, "illegal_argument_exception"),
    (errors.Unauthenticated("x"), 401, "security_exception"),
    (errors.PermissionDenied("x"), 403, "security_exception"),
    (errors.NotFound("x"), 404, "resource_not_found_exception"),
    (errors.DeadlineExceeded("x"), 408, "elasticsearch_timeout_exception"),
    (errors.AlreadyExists("x"), 409, "status_exception"),
    (errors.ResourceExhausted("x"), 429, "status_exception"),
    (errors.Unavailable("x"), 503, "status_exception"),
])
def test_domain_errors_map_to_elasticsearch_statuses_and_types(error: errors.ModelfleetError, status: int, kind: str) -> None:
    assert es_status(error.code) == (status, kind)
    resp = es_error(error)
    assert resp.status == status
    assert json.loads(resp.text or "") == {"error": {"root_cause": [{"type": kind, "reason": "x"}], "type": kind, "reason": "x"},
                                           "status": status}


def test_a_full_queue_says_when_to_retry() -> None:
    resp = es_error(errors.ResourceExhausted("queue full", trailers={"grpc-retry-pushback-ms": "1500"}))
    assert (resp.status, resp.headers["Retry-After"]) == (429, "2")


def test_infer_takes_fp16_and_answers_bytes_that_are_not_utf8_lossily() -> None:
    req = tensors.infer_request("m", {"inputs": [{"name": "h", "shape": [2], "datatype": "FP16", "data": [0.5, 2]}]})
    assert np.frombuffer(req.raw_input_contents[0], "<f2").tolist() == [0.5, 2.0]
    resp = pb.ModelInferResponse(model_name="m")
    resp.outputs.add(name="s", datatype="BYTES", shape=[1])
    resp.raw_output_contents.append(struct.pack("<I", 2) + b"\xffa")
    assert tensors.infer_answer(resp)["inference_results"][0]["outputs"][0]["data"] == ["\ufffda"]
