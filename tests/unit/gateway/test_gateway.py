"""Unit tests of the gateway's routing and traffic limit (no sockets): the
weight split, model_version pinning, least-loaded choice within a variant,
where traffic goes while variants start or retire, and the token bucket's
accuracy under overload with a fake clock."""

from __future__ import annotations

import collections
import random
from collections.abc import Iterable, Sequence

import pytest

from control_plane import errors
from control_plane.gateway.service import Gateway, GatewayStats, TokenBucket
from control_plane.routes import Route
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, deployments_pb2, models_pb2


def record(*weights: tuple[str, int]) -> records_pb2.DeploymentRecord:
    rec = records_pb2.DeploymentRecord(deployment_id="d")
    for name, weight in weights:
        rec.spec.variants.add(name=name, model_id="m", weight=weight)
    return rec


class FakeSource:
    """A RouteSource (control_plane.routes) with one deployment "d" and its routes."""

    def __init__(self, routes: list[Route]) -> None:
        self.table = {"d": routes}

    def routes(self, deployment_id: str) -> Sequence[Route]:
        return self.table.get(deployment_id, ())

    def live_addresses(self) -> set[str]:
        return {r.address for routes in self.table.values() for r in routes}

    def version(self, deployment_id: str) -> int:
        return 0

    def deployment(self, deployment_id: str) -> records_pb2.DeploymentRecord | None:
        return None

    def deployments(self) -> list[records_pb2.DeploymentRecord]:
        return []

    def model(self, model_id: str, version: int) -> models_pb2.Model | None:
        return None

    def worker_stats(self, deployment_id: str, variant: str) -> Iterable[common_pb2.InferenceStats]:
        return ()


def gateway(routes: list[Route]) -> Gateway:
    return Gateway(source=FakeSource(routes), max_message_bytes=1 << 20)


def r(aid: str, variant: str) -> Route:
    return Route(allocation_id=aid, node_id=f"n-{aid}", variant=variant, address=f"{aid}:1")


def test_split_follows_the_weights_within_two_points_over_10000_calls() -> None:
    random.seed(7)
    gw = gateway([r("a1", "v1"), r("b1", "v2"), r("b2", "v2"), r("c1", "v3")])
    rec = record(("v1", 30), ("v2", 60), ("v3", 10))
    counts = collections.Counter(gw.pick(rec, "").variant for _ in range(10_000))
    for name, weight in (("v1", 30), ("v2", 60), ("v3", 10)):
        assert abs(counts[name] / 100 - weight) <= 2, counts


def test_model_version_names_one_variant_and_an_unknown_one_is_not_found() -> None:
    gw = gateway([r("a1", "v1"), r("b1", "v2")])
    rec = record(("v1", 100), ("v2", 0))
    assert {gw.pick(rec, "v2").variant for _ in range(50)} == {"v2"}  # even at weight 0
    with pytest.raises(errors.NotFound, match="no variant 'v9'"):
        gw.pick(rec, "v9")


def test_least_loaded_started_worker_of_the_variant() -> None:
    gw = gateway([r("b1", "v2"), r("b2", "v2"), r("b3", "v2")])
    rec = record(("v2", 100))
    gw._inflight.update({"b1": 3, "b2": 1, "b3": 2})
    assert {gw.pick(rec, "").allocation_id for _ in range(20)} == {"b2"}
    gw._inflight.update({"b2": 2})  # b2 now 3, b3 2
    assert {gw.pick(rec, "").allocation_id for _ in range(20)} == {"b3"}


def test_traffic_moves_only_to_variants_with_started_workers() -> None:
    rec = record(("v1", 50), ("v2", 50))
    gw = gateway([r("a1", "v1")])  # v2 not started yet: its share goes to v1
    assert {gw.pick(rec, "").variant for _ in range(50)} == {"v1"}
    # only a retiring variant (removed by an update) still serves: it keeps serving
    gw = gateway([r("old", "v0")])
    assert gw.pick(record(("v2", 100)), "").allocation_id == "old"
    with pytest.raises(errors.Unavailable, match="no started worker"):
        gateway([]).pick(rec, "")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("rate", [5.0, 20.0, 100.0, 1000.0])
def test_token_bucket_accepts_the_rate_under_3x_overload(rate: float) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, clock=clock)
    accepted, waits = 0, []
    seconds = 10.0
    calls = int(3 * rate * seconds)
    for _ in range(calls):
        clock.now += 1 / (3 * rate)
        wait = bucket.take()
        if wait == 0:
            accepted += 1
        else:
            waits.append(wait)
    assert abs(accepted / seconds - rate) / rate <= 0.10, accepted
    assert waits and all(0 < w <= 1 / rate + 1e-9 for w in waits)


def test_gateway_stats_count_each_outcome_separately() -> None:
    stats = GatewayStats()
    assert stats.get("d") is None
    for field in ("inference_count", "inference_count", "rejected_execution_count", "timeout_count", "cancelled_count", "error_count"):
        stats.count("d", field)
    got = stats.get("d")
    assert got is not None
    assert (got.inference_count, got.rejected_execution_count, got.timeout_count, got.cancelled_count, got.error_count) == (2, 1, 1, 1, 1)
    assert got.last_access.seconds > 0
    stats.forget("d")
    assert stats.get("d") is None


def test_deployment_record_weights_are_read_per_call() -> None:
    # an update changes the record; the next pick uses the new weights
    gw = gateway([r("a1", "v1"), r("b1", "v2")])
    assert {gw.pick(record(("v1", 100), ("v2", 0)), "").variant for _ in range(30)} == {"v1"}
    assert {gw.pick(record(("v1", 0), ("v2", 100)), "").variant for _ in range(30)} == {"v2"}
    assert deployments_pb2.VariantSpec  # the spec type the records hold


def test_an_ejected_worker_gets_no_calls_until_every_worker_is_ejected() -> None:
    random.seed(3)
    gw = gateway([r("a1", "v1"), r("a2", "v1")])
    rec = record(("v1", 100))
    for _ in range(gw.outliers.threshold):
        gw.outliers.failed("a1:1", deployment="d", trial=False, reason="deadline")
    assert {gw.pick(rec, "").allocation_id for _ in range(200)} == {"a2"}
    assert gw.outliers.ejected() == {"d": 1}
    for _ in range(gw.outliers.threshold):
        gw.outliers.failed("a2:1", deployment="d", trial=False, reason="deadline")
    assert {gw.pick(rec, "").allocation_id for _ in range(200)} == {"a1", "a2"}  # rather than none
