"""The OpenAPI document is generated from the route table."""

from __future__ import annotations

from control_plane.rest.openapi import document
from control_plane.rest.v2 import v2_routes


def test_every_route_appears_once_with_its_method() -> None:
    routes = v2_routes(version="1.2.3", is_ready=lambda: True)
    doc = document(routes, version="1.2.3")
    assert doc["info"]["version"] == "1.2.3"
    for route in routes:
        assert route.method.lower() in doc["paths"][route.path]
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
