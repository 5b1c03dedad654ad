"""The OpenAPI 3 document, generated from the route table (never hand-kept)."""

from __future__ import annotations

from typing import Any

from control_plane.rest.routes import Route

ERROR_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def document(routes: list[Route], *, version: str) -> dict[str, Any]:
    """Build the OpenAPI 3.0 document describing every route in `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        responses = {code: {"description": body.get("description", ""), "content": {"application/json": {
            "schema": body["schema"]}}} for code, body in route.responses.items()}
        operation = paths.setdefault(route.path, {})[route.method.lower()] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.path.strip('/').replace('/', '_') or 'root'}",
            "responses": responses or {"200": {"description": "OK"}},
        }
        if route.request is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.request}}}
    return {"openapi": "3.0.3", "info": {"title": "modelfleet REST API", "version": version}, "paths": paths}
