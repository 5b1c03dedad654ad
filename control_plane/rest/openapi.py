"""The OpenAPI 3 document, generated from the route table (never hand-kept)."""

from __future__ import annotations

import re
from typing import Any

from control_plane.rest.routes import Route
from modelfleet.idrule import ID_PATTERN, MAX_ID_LENGTH

ERROR_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_PATH_PARAMETER = re.compile(r"(\w*)/{(\w+)(?::[^}]*)?}")
_ID_SCHEMA: dict[str, Any] = {"type": "string", "pattern": ID_PATTERN, "maxLength": MAX_ID_LENGTH}


def path_parameters(path: str) -> list[dict[str, Any]]:
    """The OpenAPI parameters of a path's `{name}` segments: model and deployment ids follow the id
    rule (control_plane/ids.py; any other value is refused with 400 naming it), the rest are strings
    without '/' (an unknown one is 404)."""
    parameters = []
    for before, name in _PATH_PARAMETER.findall(path):
        is_id = name in ("model_id", "deployment_id") or (name == "id" and before == "deployments")
        schema = _ID_SCHEMA if is_id else {"type": "string", "pattern": "^[^/]+$"}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return parameters


def document(routes: list[Route], *, version: str) -> dict[str, Any]:
    """Build the OpenAPI 3.0 document describing every route in `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        responses = {code: {"description": body.get("description", ""), "content": {
            body.get("content_type", "application/json"): {"schema": body.get("schema", {"type": "string"})}}}
            for code, body in route.responses.items()}
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.path.strip('/').replace('/', '_') or 'root'}",
            "responses": responses or {"200": {"description": "OK"}},
            # the gRPC method whose access-table row guards the route: its privileges are the route's
            "x-modelfleet-access": route.access,
        }
        if parameters := path_parameters(route.path):
            operation["parameters"] = parameters
        paths.setdefault(route.path, {})[route.method.lower()] = operation
        if route.request is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.request}}}
    return {"openapi": "3.0.3", "info": {"title": "modelfleet REST API", "version": version}, "paths": paths}
