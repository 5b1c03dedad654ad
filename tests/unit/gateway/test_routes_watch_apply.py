"""The routes watch's pure parts: the control plane's feed (updates, resume,
snapshots, refusals) and the gateway's WatchedRouteSource applying them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from control_plane import errors
from control_plane.gateway.watched import OutOfOrder, WatchedRouteSource
from control_plane.reconcile.hub import ChangeHub
from control_plane.routefeed.feed import RoutesFeed
from control_plane.routes import Route
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, gateways_pb2, models_pb2


class World:
    """A RouteSource the test edits."""

    def __init__(self) -> None:
        self.records: dict[str, records_pb2.DeploymentRecord] = {}
        self.table: dict[str, list[Route]] = {}
        self.models = {("m", 1): models_pb2.Model(model_id="m", version=1)}
        self.keys = ["k1"]

    def add(self, name: str, *addresses: str) -> None:
        rec = records_pb2.DeploymentRecord(deployment_id=name)
        rec.spec.variants.add(name="v1", model_id="m", model_version=1, weight=1)
        self.records[name] = rec
        self.table[name] = [Route(f"{name}-a{i}", "n1", "v1", a, "tok", ("m", 1)) for i, a in enumerate(addresses)]

    def routes(self, deployment_id: str) -> Sequence[Route]:
        return self.table.get(deployment_id, [])

    def deployments(self) -> list[records_pb2.DeploymentRecord]:
        return list(self.records.values())

    def model(self, model_id: str, version: int) -> models_pb2.Model | None:
        return self.models.get((model_id, version))

    def credentials(self) -> agent_pb2.InferenceCredentials:
        out = agent_pb2.InferenceCredentials()
        for k in self.keys:
            out.keys.add(key_id=k, salt=b"s", secret_hash=b"h", iterations=1)
        return out


def _feed(world: World, keep: int = 1000) -> RoutesFeed:
    return RoutesFeed(source=world, hub=ChangeHub(), credentials=world.credentials, keep=keep)  # type: ignore[arg-type]


def test_a_change_publishes_one_update_with_only_what_changed() -> None:
    world = World()
    world.add("a", "h:1")
    world.add("b", "h:2")
    feed = _feed(world)
    assert feed.refresh() and feed.revision == 1
    assert not feed.refresh(), "nothing changed: no update"
    world.table["b"].append(Route("b-x", "n2", "v1", "h:3", "tok", ("m", 1)))
    del world.records["a"]
    assert feed.refresh()
    update = feed._after(1)
    assert update is not None and len(update) == 1
    assert [d.record.deployment_id for d in update[0].deployments] == ["b"]
    assert list(update[0].removed_deployments) == ["a"]
    assert not update[0].has_credentials, "verifiers unchanged: not resent"


def test_the_gateway_side_follows_snapshot_then_changes() -> None:
    world = World()
    world.add("a", "h:1")
    feed = _feed(world)
    feed.refresh()
    gw = WatchedRouteSource()
    gw.apply(feed.snapshot())
    assert [r.address for r in gw.routes("a")] == ["h:1"]
    assert gw.model("m", 1) is not None and gw.verifiers.keys is not None and set(gw.verifiers.keys) == {"k1"}
    seen = gw.version("a")
    world.add("a", "h:1", "h:9")
    world.keys = []  # revoked
    feed.refresh()
    for update in feed._after(gw.revision) or []:
        gw.apply(update)
    assert [r.address for r in gw.routes("a")] == ["h:1", "h:9"]
    assert gw.version("a") != seen, "the gateway's record cache must see the change"
    assert gw.verifiers.keys == {}
    assert gw.snapshots == 1


def test_a_gap_or_another_epoch_is_refused_by_the_gateway_side() -> None:
    world = World()
    world.add("a", "h:1")
    feed = _feed(world)
    feed.refresh()
    gw = WatchedRouteSource()
    gw.apply(feed.snapshot())
    with pytest.raises(OutOfOrder):
        gw.apply(gateways_pb2.RoutesUpdate(epoch=feed.epoch, revision=gw.revision + 2))
    with pytest.raises(OutOfOrder):
        gw.apply(gateways_pb2.RoutesUpdate(epoch=feed.epoch + 1, revision=gw.revision + 1))
    gw.apply(gateways_pb2.RoutesUpdate(epoch=7, revision=1, snapshot=True))
    assert gw.deployments() == [] and (gw.epoch, gw.revision) == (7, 1)


async def _first(feed: RoutesFeed, request: gateways_pb2.WatchRoutesRequest) -> gateways_pb2.RoutesUpdate:
    stream = feed.watch(request)
    try:
        return await asyncio.wait_for(stream.__anext__(), 5)
    finally:
        await stream.aclose()


def test_watch_resumes_sends_a_snapshot_when_too_far_back_and_refuses_the_future() -> None:
    async def scenario() -> None:
        world = World()
        world.add("a", "h:1")
        feed = _feed(world, keep=2)
        feed.refresh()
        for i in range(3):
            world.add("a", f"h:{i + 10}")
            feed.refresh()
        assert feed.revision == 4
        resumed = await _first(feed, gateways_pb2.WatchRoutesRequest(epoch=feed.epoch, revision=3))
        assert (resumed.snapshot, resumed.revision) == (False, 4)
        old = await _first(feed, gateways_pb2.WatchRoutesRequest(epoch=feed.epoch, revision=1))
        assert old.snapshot, "revision 2 is no longer kept: a snapshot"
        other = await _first(feed, gateways_pb2.WatchRoutesRequest(epoch=feed.epoch - 1, revision=4))
        assert other.snapshot, "another epoch (a restarted control plane): a snapshot"
        future = feed.revision + 5
        with pytest.raises(errors.InvalidArgument, match=f"revision {future} is beyond .* current revision {feed.revision}"):
            await _first(feed, gateways_pb2.WatchRoutesRequest(epoch=feed.epoch, revision=future))

    asyncio.run(scenario())


def test_each_gateway_enforces_its_share_of_the_traffic_limit() -> None:
    rec = records_pb2.DeploymentRecord(deployment_id="a")
    rec.spec.traffic_limit_qps = 60
    gw = WatchedRouteSource()
    gw.apply(gateways_pb2.RoutesUpdate(epoch=1, revision=1, snapshot=True, deployments=[gateways_pb2.DeploymentRoutes(record=rec)], gateways=3))
    shared = gw.deployment("a")
    assert shared is not None and shared.spec.traffic_limit_qps == 20
    seen = gw.version("a")
    gw.apply(gateways_pb2.RoutesUpdate(epoch=1, revision=2, gateways=2))  # one gateway left
    shared = gw.deployment("a")
    assert shared is not None and shared.spec.traffic_limit_qps == 30 and gw.version("a") != seen
    gw.apply(gateways_pb2.RoutesUpdate(epoch=1, revision=3, gateways=1))
    shared = gw.deployment("a")
    assert shared is not None and shared.spec.traffic_limit_qps == 60


def test_the_feed_publishes_the_number_of_watching_gateways() -> None:
    async def scenario() -> None:
        world = World()
        world.add("a", "h:1")
        feed = _feed(world)
        feed.refresh()
        streams = [feed.watch(gateways_pb2.WatchRoutesRequest()) for _ in range(3)]
        firsts = [await asyncio.wait_for(s.__anext__(), 5) for s in streams]
        assert firsts[-1].gateways == 3
        await streams[0].aclose()
        update = await asyncio.wait_for(streams[1].__anext__(), 5)
        while update.gateways == 3:  # the updates of the joins come first
            update = await asyncio.wait_for(streams[1].__anext__(), 5)
        assert update.gateways == 2
        for s in streams[1:]:
            await s.aclose()
        assert feed.watchers == 0

    asyncio.run(scenario())
