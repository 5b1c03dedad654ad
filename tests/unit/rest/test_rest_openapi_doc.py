"""The OpenAPI document is generated from the route table; REST keys parse like gRPC's."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.auth.access import METHOD_ACCESS
from control_plane.errors import Unauthenticated
from control_plane.rest.guard import token_of
from control_plane.rest.openapi import document
from control_plane.rest.v2 import v2_routes

_NO_GATEWAY: Any = None  # the table is built without calling the gateway


def test_every_route_appears_once_with_its_method() -> None:
    routes = v2_routes(gateway=_NO_GATEWAY, is_ready=lambda: True)
    doc = document(routes, version="1.2.3")
    assert doc["info"]["version"] == "1.2.3"
    for route in routes:
        assert route.method.lower() in doc["paths"][route.path]
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_every_route_is_guarded_by_a_row_of_the_access_table() -> None:
    for route in v2_routes(gateway=_NO_GATEWAY, is_ready=lambda: True):
        assert route.access in METHOD_ACCESS, route.path


def test_bearer_and_apikey_schemes_give_the_key() -> None:
    assert token_of("Bearer abc") == "abc"
    assert token_of("ApiKey abc") == "abc"
    assert token_of("") == ""
    with pytest.raises(Unauthenticated, match="Bearer <api key>"):
        token_of("Basic abc")
