"""Elasticsearch request parameters to deployment requests (pure: no I/O).

Query parameters use Elasticsearch's names and time units (`30s`, `1m`);
both the seed's names and the newer ones are accepted, and naming the same
setting twice with different values is refused. A JSON body carries the
service fields of StartDeploymentRequest by their proto names (variants
with weights, auto_stop, traffic_limit_qps, env, resources ...); its
durations may use time units too. Every refusal names the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from control_plane import errors
from modelfleet.v1 import deployments_pb2

TIME_UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "micros": 1e-6, "nanos": 1e-9}
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(d|h|m|s|ms|micros|nanos)\s*$")
WAIT_FOR: dict[str, deployments_pb2.WaitFor] = {
    "starting": deployments_pb2.WAIT_FOR_STARTING,
    "started": deployments_pb2.WAIT_FOR_STARTED,
    "fully_allocated": deployments_pb2.WAIT_FOR_FULLY_ALLOCATED,
}
PRIORITIES = ("normal",)
MAX_INT = 2**31 - 1
# query parameter -> StartDeploymentRequest field; old and new names of one setting share a field
START_INT_PARAMS = {
    "inference_threads": "inference_threads",
    "threads_per_allocation": "inference_threads",
    "model_threads": "model_threads",
    "number_of_allocations": "instances",
    "queue_capacity": "queue_capacity",
}
START_PARAMS = frozenset({*START_INT_PARAMS, "timeout", "wait_for", "deployment_id", "priority"})
UPDATE_PARAMS = frozenset({"timeout", "wait_for"})
STOP_PARAMS = frozenset({"timeout"})
INFER_PARAMS = frozenset({"timeout"})
_DURATION_FIELDS = ("timeout", "auto_stop")
# body names Elasticsearch uses for fields that have another name here
_BODY_ALIASES = {"number_of_allocations": "instances", "threads_per_allocation": "inference_threads"}


def parse_time(field: str, text: str) -> float:
    """Seconds of an Elasticsearch time value (`500ms`, `30s`, `1m`, `2h`, `1d`)."""
    match = _TIME.match(text)
    if match is None:
        raise errors.InvalidArgument(
            f"failed to parse [{field}] with value [{text}] as a time value: expected a number with a unit "
            f"({', '.join(TIME_UNITS)}), e.g. 30s or 1m"
        )
    return float(match.group(1)) * TIME_UNITS[match.group(2)]


def parse_int(field: str, text: str, *, minimum: int = 0) -> int:
    """A whole number from `minimum` up, else InvalidArgument naming the field."""
    try:
        value = int(text.strip())
    except ValueError:
        raise errors.InvalidArgument(f"failed to parse [{field}] with value [{text}]: expected a whole number") from None
    if not minimum <= value <= MAX_INT:
        raise errors.InvalidArgument(f"[{field}] must be from {minimum} to {MAX_INT}, got {value}")
    return value


def parse_wait_for(text: str) -> deployments_pb2.WaitFor:
    value = WAIT_FOR.get(text.strip().lower())
    if value is None:
        raise errors.InvalidArgument(f"[wait_for] must be one of {', '.join(WAIT_FOR)}, got [{text}]")
    return value


def check_params(query: Mapping[str, str], allowed: frozenset[str]) -> None:
    """Refuse query parameters the route does not know (Elasticsearch does the same)."""
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise errors.InvalidArgument(
            f"request contains unrecognized parameter(s): [{', '.join(unknown)}]; supported: {', '.join(sorted(allowed))}"
        )


def _duration_text(field: str, value: Any) -> Any:
    """A body duration given with an Elasticsearch unit, in the proto JSON form ("60s")."""
    if isinstance(value, str) and _TIME.match(value):
        return f"{parse_time(field, value):.9f}s"
    return value


def _message(body: Mapping[str, Any], message: Any, *, what: str) -> None:
    """Fill `message` from a JSON object by proto field names; InvalidArgument names what does not fit."""
    try:
        json_format.ParseDict(dict(body), message)
    except json_format.ParseError as exc:
        raise errors.InvalidArgument(f"invalid {what} body: {exc}") from None


def normalize_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body with Elasticsearch's field names and time units turned into this API's."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        name = _BODY_ALIASES.get(key, key)
        if name in out and out[name] != value:
            raise errors.InvalidArgument(f"[{key}] and [{name}] name the same setting with different values")
        out[name] = _duration_text(name, value) if name in _DURATION_FIELDS else value
    return out


def _set_once(req: deployments_pb2.StartDeploymentRequest, param: str, field: str, value: Any) -> None:
    if req.HasField(field) if field in _DURATION_FIELDS else getattr(req, field):
        current = getattr(req, field)
        if current != value:
            raise errors.InvalidArgument(f"[{param}] conflicts with another parameter or the body, which set {field} to {current}")
    if field == "timeout":
        req.timeout.FromNanoseconds(int(value * 1e9))
    else:
        setattr(req, field, value)


def start_request(model_id: str, query: Mapping[str, str], body: Mapping[str, Any]) -> deployments_pb2.StartDeploymentRequest:
    """The StartDeploymentRequest of `POST /_ml/trained_models/{model_id}/deployment/_start`.

    With `variants` in the body the path's model_id names the deployment
    (unless deployment_id is given) and each variant names its own model."""
    check_params(query, START_PARAMS)
    req = deployments_pb2.StartDeploymentRequest()
    _message(normalize_body(body), req, what="_start")
    if req.variants:
        if req.model_id:
            raise errors.InvalidArgument("[model_id] in the body is not allowed with [variants]: each variant names its model")
        if not req.deployment_id:
            req.deployment_id = model_id
    elif req.model_id and req.model_id != model_id:
        raise errors.InvalidArgument(f"[model_id] in the body ({req.model_id}) differs from the path's ({model_id})")
    else:
        req.model_id = model_id
    for param, field in START_INT_PARAMS.items():
        if param in query:
            _set_once(req, param, field, parse_int(param, query[param], minimum=1 if field != "instances" else 0))
    if "deployment_id" in query:
        _set_once(req, "deployment_id", "deployment_id", query["deployment_id"])
    if "timeout" in query:
        req.timeout.FromNanoseconds(int(parse_time("timeout", query["timeout"]) * 1e9))
    if "wait_for" in query:
        req.wait_for = parse_wait_for(query["wait_for"])
    priority = query.get("priority", "normal").strip().lower()
    if priority not in PRIORITIES:
        raise errors.InvalidArgument(f"[priority] must be normal (this server has no low-priority allocations), got [{priority}]")
    return req


def update_request(deployment_id: str, query: Mapping[str, str], body: Mapping[str, Any]) -> deployments_pb2.UpdateDeploymentRequest:
    """The UpdateDeploymentRequest of `POST …/deployment/_update`: the body's top-level fields are the update mask."""
    check_params(query, UPDATE_PARAMS)
    fields = normalize_body(body)
    if not fields:
        raise errors.InvalidArgument("the _update body names no field to update, e.g. {\"number_of_allocations\": 2}")
    req = deployments_pb2.UpdateDeploymentRequest(deployment_id=deployment_id)
    _message(fields, req.spec, what="_update")
    req.update_mask.paths.extend(fields)
    if "timeout" in query:
        req.timeout.FromNanoseconds(int(parse_time("timeout", query["timeout"]) * 1e9))
    if "wait_for" in query:
        req.wait_for = parse_wait_for(query["wait_for"])
    return req


def stop_request(deployment_id: str, query: Mapping[str, str]) -> deployments_pb2.StopDeploymentRequest:
    """`POST …/deployment/_stop`: with `timeout`, wait (up to it) until stopped."""
    check_params(query, STOP_PARAMS)
    req = deployments_pb2.StopDeploymentRequest(deployment_id=deployment_id)
    if "timeout" in query:
        req.wait = True
        req.timeout.FromNanoseconds(int(parse_time("timeout", query["timeout"]) * 1e9))
    return req
