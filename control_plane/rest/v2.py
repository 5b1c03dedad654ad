"""KServe V2 REST: health, server and model metadata, readiness, config and statistics
(inference: control_plane.rest.v2_infer).

Model routes adapt HTTP to the same Gateway object the gRPC service uses, so
lookup, version selection and errors are the gateway's own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from control_plane.gateway.service import Gateway
from control_plane.rest.openapi import ERROR_SCHEMA
from control_plane.rest.routes import Route
from control_plane.rest.v2_infer import DEFAULT_MAX_BODY_BYTES, infer_routes
from modelfleet.inference import grpc_service_pb2 as pb

SERVER_NAME = "modelfleet"
_V2 = "/inference.GRPCInferenceService"
_OBJ: dict[str, Any] = {"type": "object"}
_METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                   "extensions": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "version", "extensions"],
}
_MODEL_ERRORS = {"400": {"schema": ERROR_SCHEMA}, "401": {"schema": ERROR_SCHEMA}, "403": {"schema": ERROR_SCHEMA},
                 "404": {"schema": ERROR_SCHEMA}}


def _json(message: Message) -> web.Response:
    return web.json_response(json_format.MessageToDict(message, preserving_proto_field_name=True))


def _name_version(request: web.Request) -> tuple[str, str]:
    return request.match_info["name"], request.match_info.get("version", "")


def _server_routes(gateway: Gateway, is_ready: Callable[[], bool]) -> list[Route]:
    async def live(_: web.Request) -> web.Response:
        return web.json_response({})

    async def ready(_: web.Request) -> web.Response:
        if is_ready():
            return web.json_response({})
        return web.json_response({"error": "the control plane is not ready"}, status=503)

    async def metadata(_: web.Request) -> web.Response:
        reply = await gateway.ServerMetadata(pb.ServerMetadataRequest(), None)
        return web.json_response({"name": reply.name, "version": reply.version, "extensions": list(reply.extensions)})

    return [
        Route("GET", "/v2/health/live", live, "Server liveness", {"200": {"schema": _OBJ}}, f"{_V2}/ServerLive"),
        Route("GET", "/v2/health/ready", ready, "Server readiness",
              {"200": {"schema": _OBJ}, "503": {"schema": ERROR_SCHEMA}}, f"{_V2}/ServerReady"),
        Route("GET", "/v2", metadata, "Server metadata", {"200": {"schema": _METADATA_SCHEMA}}, f"{_V2}/ServerMetadata"),
    ]


def _model_routes(gateway: Gateway, prefix: str) -> list[Route]:
    async def metadata(request: web.Request) -> web.Response:
        name, version = _name_version(request)
        return _json(await gateway.ModelMetadata(pb.ModelMetadataRequest(name=name, version=version), None))

    async def ready(request: web.Request) -> web.Response:
        name, version = _name_version(request)
        reply = await gateway.ModelReady(pb.ModelReadyRequest(name=name, version=version), None)
        if reply.ready:
            return web.json_response({})
        return web.json_response({"error": f"model '{name}' is not ready"}, status=503)

    async def config(request: web.Request) -> web.Response:
        name, version = _name_version(request)
        return _json(await gateway.ModelConfig(pb.ModelConfigRequest(name=name, version=version), None))

    async def stats(request: web.Request) -> web.Response:
        name, version = _name_version(request)
        return _json(await gateway.ModelStatistics(pb.ModelStatisticsRequest(name=name, version=version), None))

    ok = {"200": {"schema": _OBJ}, **_MODEL_ERRORS}
    return [
        Route("GET", prefix, metadata, "Model metadata", ok, f"{_V2}/ModelMetadata"),
        Route("GET", f"{prefix}/ready", ready, "Model readiness", {**ok, "503": {"schema": ERROR_SCHEMA}}, f"{_V2}/ModelReady"),
        Route("GET", f"{prefix}/config", config, "Model configuration", ok, f"{_V2}/ModelConfig"),
        Route("GET", f"{prefix}/stats", stats, "Model statistics", ok, f"{_V2}/ModelStatistics"),
    ]


def v2_routes(*, gateway: Gateway, is_ready: Callable[[], bool], max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> list[Route]:
    """Every V2 route; server readiness follows `is_ready` (false while shutting down); an infer
    body over `max_body_bytes` is refused with 413."""
    return [
        *_server_routes(gateway, is_ready),
        *_model_routes(gateway, "/v2/models/{name}"),
        *_model_routes(gateway, "/v2/models/{name}/versions/{version}"),
        *infer_routes(gateway, "/v2/models/{name}", max_body_bytes=max_body_bytes),
        *infer_routes(gateway, "/v2/models/{name}/versions/{version}", max_body_bytes=max_body_bytes),
    ]
