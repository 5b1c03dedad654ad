"""The console API's route table and request transcoding (pure logic; the routes run for real in
tests/system/test_console_api.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from control_plane.auth.access import METHOD_ACCESS
from control_plane.errors import InvalidArgument
from control_plane.reconcile.hub import ChangeHub
from control_plane.rest import api_v1, sse
from control_plane.rest.openapi import document
from modelfleet.v1 import deployments_pb2 as dpb

_UNUSED: Any = None  # the table is built without calling the services


def _routes() -> list[Any]:
    services = api_v1.Services(deployments=_UNUSED, registry=_UNUSED, nodes=_UNUSED, keys=_UNUSED, hub=_UNUSED,
                               streams=sse.Streams(), open_calls=_UNUSED)
    return api_v1.api_v1_routes(services)


def test_every_route_is_guarded_by_its_grpc_method_and_documented() -> None:
    routes = _routes()
    doc = document(routes, version="0")
    for route in routes:
        assert route.access in METHOD_ACCESS, route.path
        assert route.method.lower() in doc["paths"][route.path]
    watch = doc["paths"]["/api/v1/watch/deployments"]["get"]["responses"]["200"]["content"]
    assert list(watch) == ["text/event-stream"]


def test_mutating_routes_mirror_mutating_rows() -> None:
    for route in _routes():
        assert METHOD_ACCESS[route.access].mutating == (route.method != "GET"), route.path


def test_update_mask_takes_proto_field_names() -> None:
    req = api_v1._parse({"spec": {"traffic_limit_qps": 5}, "update_mask": "traffic_limit_qps, variants"},
                        dpb.UpdateDeploymentRequest())
    assert list(req.update_mask.paths) == ["traffic_limit_qps", "variants"]
    assert list(api_v1._parse({"update_mask": ["description"]}, dpb.UpdateDeploymentRequest()).update_mask.paths) == [
        "description"]
    with pytest.raises(InvalidArgument, match="update_mask"):
        api_v1._parse({"update_mask": 3}, dpb.UpdateDeploymentRequest())


def test_a_body_that_does_not_fit_names_the_field() -> None:
    with pytest.raises(InvalidArgument, match="instances"):
        api_v1._parse({"instances": "many"}, dpb.StartDeploymentRequest())


def test_hub_snapshots_yield_on_change_only() -> None:
    async def scenario() -> list[int]:
        hub = ChangeHub()
        reads = [1, 1, 2]

        def read() -> int:
            value = reads.pop(0)
            if len(reads) == 1:
                hub.notify("b")  # a change while the unchanged value is read: seen on the next wait
            return value

        stream = sse.hub_snapshots(hub, read, heartbeat=3600)
        seen = [await anext(stream)]
        hub.notify("a")  # re-read: still 1, nothing to send; then b's change: 2
        seen.append(await anext(stream))
        await stream.aclose()
        return seen

    assert asyncio.run(scenario()) == [1, 2]
