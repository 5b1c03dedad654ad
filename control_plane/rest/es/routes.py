"""The Elasticsearch-shaped management routes: HTTP in, the same in-process
service call the gRPC servicer makes, Elasticsearch JSON out.

Each route is guarded by the access-table row of the gRPC method it mirrors
(`Route.access`) and answers errors in Elasticsearch's body shape
(control_plane.rest.es.errors)."""

from __future__ import annotations

import json
import time
from typing import Any, NoReturn, cast

import grpc
from aiohttp import web

from control_plane import errors
from control_plane.auth.access import caller
from control_plane.deployments.service import DeploymentService
from control_plane.gateway.service import Gateway
from control_plane.models.registry import ModelRegistry
from control_plane.rest.es import params, shaping, tensors
from control_plane.rest.es.errors import es_error
from control_plane.rest.routes import Route
from modelfleet.v1 import common_pb2, deployments_pb2

_D = "/modelfleet.v1.Deployments"
_BASE = "/_ml/trained_models"
_DEPLOYMENT = f"{_BASE}/{{model_id}}/deployment"
DEFAULT_INFER_TIMEOUT_S = 10.0  # Elasticsearch's _infer default
MAX_LISTED = 1000
_OBJ: dict[str, Any] = {"type": "object"}
ES_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "root_cause": {"type": "array", "items": _OBJ}, "type": {"type": "string"}, "reason": {"type": "string"}},
        "required": ["root_cause", "type", "reason"]}, "status": {"type": "integer"}},
    "required": ["error", "status"],
}
_RELAYED: dict[str, type[errors.ModelfleetError]] = {
    cls.code: cls for cls in (errors.InvalidArgument, errors.NotFound, errors.AlreadyExists, errors.FailedPrecondition,
                              errors.ResourceExhausted, errors.DeadlineExceeded, errors.Unavailable, errors.Unimplemented)
}


def _responses(*codes: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"200": {"schema": _OBJ}}
    for code in ("400", "401", "403", *codes):
        out[code] = {"schema": ES_ERROR_SCHEMA}
    return out


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} when there is no body)."""
    text = await request.text()
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.InvalidArgument(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise errors.InvalidArgument(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _query(request: web.Request) -> dict[str, str]:
    return dict(request.query.items())


class _Call:
    """What the gateway reads of a gRPC call: its time remaining, and `abort` for a worker's error status."""

    def __init__(self, timeout: float) -> None:
        self._deadline = time.monotonic() + timeout

    def time_remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str, trailers: Any = ()) -> NoReturn:
        pushback = dict(trailers or ())
        raise _RELAYED.get(code.name, errors.ModelfleetError)(details, trailers=pushback)


class EsRoutes:
    """Handlers over the deployment service, the model registry and the gateway."""

    def __init__(self, *, deployments: DeploymentService, registry: ModelRegistry, gateway: Gateway) -> None:
        self.deployments = deployments
        self.registry = registry
        self.gateway = gateway

    async def start(self, request: web.Request) -> web.Response:
        req = params.start_request(request.match_info["model_id"], _query(request), await json_body(request))
        resp = await self.deployments.start(req, owner=caller())
        return web.json_response(shaping.allocation_answer(resp.deployment))

    async def stop(self, request: web.Request) -> web.Response:
        await self.deployments.stop(params.stop_request(request.match_info["model_id"], _query(request)))
        return web.json_response({"stopped": True})

    async def update(self, request: web.Request) -> web.Response:
        req = params.update_request(request.match_info["model_id"], _query(request), await json_body(request))
        resp = await self.deployments.update(req)
        return web.json_response(shaping.allocation_answer(resp.deployment))

    async def get_deployment(self, request: web.Request) -> web.Response:
        params.check_params(_query(request), frozenset())
        return web.json_response(shaping.allocation_answer(self.deployments.get(request.match_info["model_id"])))

    async def models(self, request: web.Request) -> web.Response:
        query = _query(request)
        params.check_params(query, frozenset({"from", "size"}))
        start = params.parse_int("from", query.get("from", "0"))
        size = params.parse_int("size", query.get("size", "100"))
        model_id = request.match_info.get("model_id", "")
        found = self.registry.list("" if model_id in ("", "_all", "*") else model_id)
        if model_id and not found and model_id not in ("_all", "*"):
            raise errors.NotFound(f"No known trained model with model_id [{model_id}]")
        configs = [shaping.model_config(m) for m in found[start:start + size]]
        return web.json_response({"count": len(found), "trained_model_configs": configs})

    async def stats(self, request: web.Request) -> web.Response:
        params.check_params(_query(request), frozenset())
        name = request.match_info["model_id"]
        entries = self._stats_of_deployment(name) or self._stats_of_model(name)
        return web.json_response({"count": len(entries), "trained_model_stats": entries})

    def _entry(self, deployment: deployments_pb2.Deployment) -> dict[str, Any]:
        tp = deployment.allocations[0].task_parameters if deployment.allocations else deployments_pb2.TaskParameters()
        stats = self.deployments.stats(deployment.deployment_id)
        return shaping.model_stats(tp.model_id, tp.model_bytes, shaping.deployment_stats(deployment, stats))

    def _stats_of_deployment(self, name: str) -> list[dict[str, Any]]:
        try:
            deployment = self.deployments.get(name)
        except errors.NotFound:
            return []
        return [self._entry(deployment)]

    def _stats_of_model(self, model_id: str) -> list[dict[str, Any]]:
        """The model's deployments, or the model alone when none runs it (no deployment_stats)."""
        versions = self.registry.list(model_id)
        if not versions:
            raise errors.NotFound(f"No known trained model or deployment with id [{model_id}]")
        listed = self.deployments.list(deployments_pb2.ListDeploymentsRequest(
            model_id=model_id, view=common_pb2.VIEW_FULL, page=common_pb2.PageRequest(page_size=MAX_LISTED)))
        return [self._entry(d) for d in listed.deployments] or [shaping.model_stats(model_id, versions[-1].model_bytes, None)]

    async def infer(self, request: web.Request) -> web.Response:
        query = _query(request)
        params.check_params(query, params.INFER_PARAMS)
        timeout = params.parse_time("timeout", query["timeout"]) if "timeout" in query else DEFAULT_INFER_TIMEOUT_S
        req = tensors.infer_request(request.match_info["model_id"], await json_body(request))
        reply = await self.gateway.ModelInfer(req.SerializeToString(), cast(Any, _Call(timeout)))
        return web.json_response(tensors.infer_answer(tensors.parse_answer(reply)))

    def table(self) -> list[Route]:
        on_error = es_error
        return [
            Route("POST", f"{_DEPLOYMENT}/_start", self.start, "Start a trained model deployment (Elasticsearch shape)",
                  _responses("404", "408", "409", "429"), f"{_D}/StartDeployment", on_error),
            Route("POST", f"{_DEPLOYMENT}/_stop", self.stop, "Stop a trained model deployment",
                  _responses("404", "408"), f"{_D}/StopDeployment", on_error),
            Route("POST", f"{_DEPLOYMENT}/_update", self.update, "Update a trained model deployment",
                  _responses("404", "408", "409", "429"), f"{_D}/UpdateDeployment", on_error),
            Route("GET", _DEPLOYMENT, self.get_deployment, "A deployment's allocations in the seed's shape",
                  _responses("404"), f"{_D}/GetDeployment", on_error),
            Route("POST", f"{_DEPLOYMENT}/_infer", self.infer, "Infer with a deployment (tensor body)",
                  _responses("404", "408", "429", "503"), "/inference.GRPCInferenceService/ModelInfer", on_error),
            Route("GET", _BASE, self.models, "Trained models", _responses(), "/modelfleet.v1.ModelRegistry/ListModels", on_error),
            Route("GET", f"{_BASE}/{{model_id}}", self.models, "One trained model's versions", _responses("404"),
                  "/modelfleet.v1.ModelRegistry/ListModels", on_error),
            Route("GET", f"{_BASE}/{{model_id}}/_stats", self.stats, "Trained model and deployment statistics",
                  _responses("404"), f"{_D}/GetDeploymentStats", on_error),
        ]


def es_routes(*, deployments: DeploymentService, registry: ModelRegistry, gateway: Gateway) -> list[Route]:
    """Every Elasticsearch-shaped route."""
    return EsRoutes(deployments=deployments, registry=registry, gateway=gateway).table()

