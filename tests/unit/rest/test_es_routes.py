"""The Elasticsearch routes' table: each guarded by an access-table row, answering errors in Elasticsearch's shape."""

from __future__ import annotations

from typing import Any

from control_plane.auth.access import METHOD_ACCESS
from control_plane.rest.es.errors import es_error
from control_plane.rest.es.routes import es_routes
from control_plane.rest.openapi import document
from control_plane.rest.v2 import v2_routes

_NONE: Any = None  # the table is built without calling the services


def test_every_es_route_is_guarded_documented_and_answers_elasticsearch_errors() -> None:
    routes = es_routes(deployments=_NONE, registry=_NONE, gateway=_NONE)
    for route in routes:
        assert route.access in METHOD_ACCESS, route.path
        assert route.on_error is es_error, route.path
    mutating = {r.path.rsplit("/", 1)[-1] for r in routes if METHOD_ACCESS[r.access].mutating}
    assert mutating == {"_start", "_stop", "_update"}
    doc = document([*v2_routes(gateway=_NONE, is_ready=lambda: True), *routes], version="0")
    ops = [op for ops in doc["paths"].values() for op in ops.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    assert all(op["x-modelfleet-access"] in METHOD_ACCESS for op in ops)
