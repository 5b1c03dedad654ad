"""The console's JSON API: /api/v1/... transcodes the management gRPC methods to JSON.

Each route calls the same in-process service object as its gRPC servicer
(DeploymentService, ModelRegistry, NodeService, KeyService), parses the
request with `google.protobuf.json_format` into the gRPC request message and
answers its reply as JSON with the proto field names, so the two APIs share
validation, errors and the access table row (`Route.access`). Path
parameters name the resource; GET query parameters fill the request's
scalar fields (`page_size` / `page_token` fill `page`); POST / PATCH bodies
are the request message as JSON.

Live status is server-sent events (sse.py): one stream per deployment fed
by WatchDeployment's generator, and one for the whole list fed by the
change hub's "*" key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from control_plane.auth.access import METHOD_ACCESS, OpenCalls, caller, current_principal
from control_plane.auth.audit import AuditLog, target_of
from control_plane.auth.keys import KeyService
from control_plane.deployments.service import DeploymentService
from control_plane.errors import InvalidArgument
from control_plane.models.registry import ModelRegistry
from control_plane.nodes.agents import NodeService
from control_plane.reconcile.hub import ChangeHub
from control_plane.rest import sse
from control_plane.rest.openapi import ERROR_SCHEMA
from control_plane.rest.routes import Route
from modelfleet.errors import StatusError
from modelfleet.v1 import deployments_pb2 as dpb
from modelfleet.v1 import models_pb2, nodes_pb2

M = TypeVar("M", bound=Message)
PREFIX = "/api/v1"
_V1 = "/modelfleet.v1"
_OBJ: dict[str, Any] = {"type": "object"}
_ERRORS = {code: {"schema": ERROR_SCHEMA} for code in ("400", "401", "403", "404", "409", "429", "503")}
_OK = {"200": {"schema": _OBJ}, **_ERRORS}


@dataclass(frozen=True)
class Services:
    """The in-process objects the gRPC servicers call; the console's routes call the same."""

    deployments: DeploymentService
    registry: ModelRegistry
    nodes: NodeService
    keys: KeyService
    hub: ChangeHub
    streams: sse.Streams
    # streams are registered under the key that opened them, so revoking the key ends them (as gRPC's watch)
    open_calls: OpenCalls
    audit: AuditLog | None = None  # where mutating calls are written, as the gRPC interceptor writes its own


def to_json(message: Message) -> dict[str, Any]:
    """The message as JSON with proto field names and every field (defaults included, enums by name)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _reply(message: Message) -> web.Response:
    return web.json_response(to_json(message))


def _parse(data: dict[str, Any], message: M) -> M:
    mask = data.pop("update_mask", None) if "update_mask" in message.DESCRIPTOR.fields_by_name else None
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"the request does not fit {message.DESCRIPTOR.name}: {exc}") from None
    if mask is not None:
        message.update_mask.paths.extend(_mask_paths(mask))
    return message


def _mask_paths(mask: Any) -> list[str]:
    """update_mask by the proto field names the replies use: "a,b" or ["a", "b"] (JSON's FieldMask wants camelCase)."""
    paths = mask.split(",") if isinstance(mask, str) else mask
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise InvalidArgument('update_mask must be a string "field,field" or a list of field names')
    return [p.strip() for p in paths if p.strip()]


def from_query(request: web.Request, message: M, **fixed: Any) -> M:
    """The request message from the query string (plus path parameters in `fixed`)."""
    data: dict[str, Any] = {}
    page: dict[str, Any] = {}
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in request.query.items():
        if name in ("page_size", "page_token"):
            page[name] = value
        elif name in fields:
            field = fields[name]
            data[name] = value.lower() in ("1", "true", "yes") if field.type == field.TYPE_BOOL else value
        else:
            raise InvalidArgument(f"query parameter {name!r} is not a field of {message.DESCRIPTOR.name}")
    if page:
        data["page"] = page
    request["message"] = _parse({**data, **fixed}, message)
    return message


async def from_body(request: web.Request, message: M, **fixed: Any) -> M:
    """The request message from the JSON body (an empty body is the empty message); path parameters win."""
    text = await request.text()
    request["message"] = message
    if not text.strip():
        return _parse(fixed, message)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"the body must be a JSON object ({message.DESCRIPTOR.name}), not {type(data).__name__}")
    return _parse({**data, **fixed}, message)


def _deployment_routes(s: Services) -> list[Route]:
    svc = s.deployments

    async def list_(request: web.Request) -> web.Response:
        return _reply(svc.list(from_query(request, dpb.ListDeploymentsRequest())))

    async def start(request: web.Request) -> web.Response:
        return _reply(await svc.start(await from_body(request, dpb.StartDeploymentRequest()), owner=caller()))

    async def get(request: web.Request) -> web.Response:
        return _reply(svc.read(from_query(request, dpb.GetDeploymentRequest(), deployment_id=request.match_info["id"])))

    async def update(request: web.Request) -> web.Response:
        req = await from_body(request, dpb.UpdateDeploymentRequest(), deployment_id=request.match_info["id"])
        return _reply(await svc.update(req))

    async def stop(request: web.Request) -> web.Response:
        req = await from_body(request, dpb.StopDeploymentRequest(), deployment_id=request.match_info["id"])
        return _reply(await svc.stop(req))

    async def delete(request: web.Request) -> web.Response:
        return _reply(svc.delete(from_query(request, dpb.DeleteDeploymentRequest(), deployment_id=request.match_info["id"])))

    async def events(request: web.Request) -> web.Response:
        req = from_query(request, dpb.ListDeploymentEventsRequest(), deployment_id=request.match_info["id"])
        return _reply(svc.list_events(req))

    async def stats(request: web.Request) -> web.Response:
        return _reply(svc.stats(request.match_info["id"]))

    one = f"{PREFIX}/deployments/{{id}}"
    d = f"{_V1}.Deployments"
    return [
        Route("GET", f"{PREFIX}/deployments", list_, "List deployments (ListDeployments)", _OK, f"{d}/ListDeployments"),
        Route("POST", f"{PREFIX}/deployments", start, "Start a deployment or preview it (StartDeployment, dry_run)",
              _OK, f"{d}/StartDeployment"),
        Route("GET", one, get, "One deployment (GetDeployment)", _OK, f"{d}/GetDeployment"),
        Route("PATCH", one, update, "Update a deployment (UpdateDeployment)", _OK, f"{d}/UpdateDeployment"),
        Route("DELETE", one, delete, "Delete a stopped deployment (DeleteDeployment)", _OK, f"{d}/DeleteDeployment"),
        Route("POST", f"{one}/stop", stop, "Stop a deployment (StopDeployment)", _OK, f"{d}/StopDeployment"),
        Route("GET", f"{one}/events", events, "A deployment's events (ListDeploymentEvents)", _OK,
              f"{d}/ListDeploymentEvents"),
        Route("GET", f"{one}/stats", stats, "A deployment's statistics (GetDeploymentStats)", _OK,
              f"{d}/GetDeploymentStats"),
    ]


def _fleet_routes(s: Services) -> list[Route]:
    async def models(request: web.Request) -> web.Response:
        return _reply(s.registry.list_page(from_query(request, models_pb2.ListModelsRequest())))

    async def nodes(request: web.Request) -> web.Response:
        return _reply(s.nodes.list(from_query(request, nodes_pb2.ListNodesRequest())))

    async def drain(request: web.Request) -> web.Response:
        return _reply(s.nodes.drain(request.match_info["id"]))

    async def uncordon(request: web.Request) -> web.Response:
        return _reply(s.nodes.uncordon(request.match_info["id"]))

    async def whoami(request: web.Request) -> web.Response:
        return _reply(s.keys.whoami(current_principal(), user=caller()))

    n = f"{_V1}.Nodes"
    return [
        Route("GET", f"{PREFIX}/models", models, "List models (ListModels)", _OK, f"{_V1}.ModelRegistry/ListModels"),
        Route("GET", f"{PREFIX}/nodes", nodes, "List nodes (ListNodes)", _OK, f"{n}/ListNodes"),
        Route("POST", f"{PREFIX}/nodes/{{id}}/drain", drain, "Drain a node (DrainNode)", _OK, f"{n}/DrainNode"),
        Route("POST", f"{PREFIX}/nodes/{{id}}/uncordon", uncordon, "Uncordon a node (UncordonNode)", _OK,
              f"{n}/UncordonNode"),
        Route("GET", f"{PREFIX}/whoami", whoami, "Who the key is and what it may do (WhoAmI)", _OK, f"{_V1}.Auth/WhoAmI"),
    ]


def _watch_routes(s: Services) -> list[Route]:
    async def serve(request: web.Request, source: AsyncGenerator[bytes, None]) -> web.StreamResponse:
        principal = current_principal()
        with s.open_calls.track(principal.key_id if principal is not None else ""):
            return await s.streams.serve(request, source)

    async def watch_one(request: web.Request) -> web.StreamResponse:
        req = from_query(request, dpb.WatchDeploymentRequest(), deployment_id=request.match_info["id"])
        snapshots = s.deployments.watch(req.deployment_id, after_seq=req.after_seq)
        return await serve(request, sse.messages(snapshots, to_json))

    async def watch_list(request: web.Request) -> web.StreamResponse:
        req = from_query(request, dpb.ListDeploymentsRequest())
        lists = sse.hub_snapshots(s.hub, lambda: s.deployments.list(req))
        return await serve(request, sse.messages(lists, to_json))

    stream: dict[str, dict[str, Any]] = {"200": {"description": "server-sent events, one `data:` JSON message per change",
                      "content_type": sse.CONTENT_TYPE, "schema": sse.EVENT_SCHEMA}, **_ERRORS}
    d = f"{_V1}.Deployments"
    return [
        Route("GET", f"{PREFIX}/deployments/{{id}}/watch", watch_one,
              "A deployment's snapshots as server-sent events (WatchDeployment)", stream, f"{d}/WatchDeployment"),
        Route("GET", f"{PREFIX}/watch/deployments", watch_list,
              "The deployment list as server-sent events, on every change (ListDeployments)", stream,
              f"{d}/ListDeployments"),
    ]


def _audited(route: Route, audit: AuditLog | None) -> Route:
    """The route, writing each call to the audit log when its access row is mutating (as gRPC's calls are)."""
    rule = METHOD_ACCESS.get(route.access)
    if audit is None or rule is None or not rule.mutating:
        return route
    handler = route.handler

    async def audited(request: web.Request) -> web.StreamResponse:
        outcome, message = "OK", ""
        try:
            return await handler(request)
        except StatusError as exc:
            outcome, message = exc.code, exc.message
            raise
        except Exception:
            outcome, message = "INTERNAL", "internal error"
            raise
        finally:
            principal = current_principal()
            audit.record(method=route.access, user=caller(), key_id=principal.key_id if principal else "",
                         target=target_of(request.get("message")) or request.match_info.get("id", ""),
                         outcome=outcome, message=message, client=request.remote or "")

    return dataclasses.replace(route, handler=audited)


def api_v1_routes(services: Services) -> list[Route]:
    """Every /api/v1 route, each guarded by its gRPC method's row of the access table."""
    routes = [*_deployment_routes(services), *_fleet_routes(services), *_watch_routes(services)]
    return [_audited(route, services.audit) for route in routes]
