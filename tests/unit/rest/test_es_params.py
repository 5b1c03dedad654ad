"""Elasticsearch query parameters, bodies and time units to deployment requests."""

from __future__ import annotations

import pytest

from control_plane import errors
from control_plane.rest.es import params
from modelfleet.v1 import deployments_pb2


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("1m", 60.0), ("2h", 7200.0), ("1d", 86400.0), ("500ms", 0.5), ("1.5s", 1.5), ("250micros", 250e-6),
])
def test_time_values_use_elasticsearch_units(text: str, seconds: float) -> None:
    assert params.parse_time("timeout", text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["20", "1x", "", "-1s", "s"])
def test_a_time_value_without_a_known_unit_names_the_field(text: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"\[timeout\]"):
        params.parse_time("timeout", text)


def test_seed_query_parameters_fill_the_start_request() -> None:
    req = params.start_request("my-model", {
        "inference_threads": "2", "model_threads": "1", "queue_capacity": "64", "timeout": "1m", "wait_for": "fully_allocated",
    }, {})
    assert (req.model_id, req.deployment_id) == ("my-model", "")
    assert (req.inference_threads, req.model_threads, req.queue_capacity) == (2, 1, 64)
    assert req.timeout.seconds == 60
    assert req.wait_for == deployments_pb2.WAIT_FOR_FULLY_ALLOCATED


def test_newer_names_map_to_the_same_settings() -> None:
    req = params.start_request("m", {"threads_per_allocation": "3", "number_of_allocations": "2", "deployment_id": "d",
                                     "priority": "normal"}, {})
    assert (req.inference_threads, req.instances, req.deployment_id) == (3, 2, "d")


def test_old_and_new_name_with_different_values_are_refused() -> None:
    with pytest.raises(errors.InvalidArgument, match="threads_per_allocation"):
        params.start_request("m", {"inference_threads": "2", "threads_per_allocation": "3"}, {})


@pytest.mark.parametrize(("query", "field"), [
    ({"queue_capacity": "lots"}, "queue_capacity"), ({"inference_threads": "0"}, "inference_threads"),
    ({"wait_for": "done"}, "wait_for"), ({"priority": "low"}, "priority"), ({"cache_size": "1"}, "cache_size"),
])
def test_bad_query_parameters_name_the_field(query: dict[str, str], field: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=field):
        params.start_request("m", query, {})


def test_the_body_carries_service_fields_with_time_units() -> None:
    req = params.start_request("m", {}, {"auto_stop": "2h", "traffic_limit_qps": 5, "env": {"A": "1"},
                                         "resources": {"pool": "gpu"}, "number_of_allocations": 1})
    assert req.auto_stop.seconds == 7200
    assert (req.traffic_limit_qps, dict(req.env), req.resources.pool, req.instances) == (5.0, {"A": "1"}, "gpu", 1)


def test_variants_in_the_body_take_the_path_id_as_deployment_id() -> None:
    req = params.start_request("svc", {}, {"variants": [{"model_id": "a", "weight": 70}, {"model_id": "b", "weight": 30}]})
    assert (req.model_id, req.deployment_id) == ("", "svc")
    assert [(v.model_id, v.weight) for v in req.variants] == [("a", 70), ("b", 30)]


def test_an_unknown_body_field_is_named() -> None:
    with pytest.raises(errors.InvalidArgument, match="no_such_field"):
        params.start_request("m", {}, {"no_such_field": 1})


def test_update_body_fields_are_the_update_mask() -> None:
    req = params.update_request("d", {"wait_for": "started", "timeout": "30s"}, {"number_of_allocations": 2,
                                                                                 "traffic_limit_qps": 3})
    assert list(req.update_mask.paths) == ["instances", "traffic_limit_qps"]
    assert (req.spec.instances, req.spec.traffic_limit_qps, req.timeout.seconds) == (2, 3.0, 30)
    with pytest.raises(errors.InvalidArgument, match="names no field"):
        params.update_request("d", {}, {})


def test_stop_with_a_timeout_waits() -> None:
    assert params.stop_request("d", {}).wait is False
    req = params.stop_request("d", {"timeout": "10s"})
    assert (req.wait, req.timeout.seconds) == (True, 10)
