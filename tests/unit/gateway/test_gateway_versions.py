"""Unit tests of what a V2 model_version means at the gateway
(control_plane.gateway.versions): a variant name, or the model's version
number as Triton clients send it."""

from __future__ import annotations

import collections
import random

import pytest
from test_gateway import gateway, r

from control_plane import errors
from control_plane.gateway import versions
from modelfleet.store.v1 import records_pb2


def record(*variants: tuple[str, int, int]) -> records_pb2.DeploymentRecord:
    """variants: (name, model version, weight), all of model "m"."""
    rec = records_pb2.DeploymentRecord(deployment_id="d")
    for name, number, weight in variants:
        rec.spec.variants.add(name=name, model_id="m", model_version=number, weight=weight)
    return rec


def test_a_number_selects_the_variant_serving_that_model_version() -> None:
    rec = record(("scorer-v1", 1, 100), ("scorer-v2", 2, 0))
    assert [v.name for v in versions.select(rec, "2")] == ["scorer-v2"]
    assert [v.name for v in versions.select(rec, "scorer-v1")] == ["scorer-v1"]
    assert [v.name for v in versions.select(rec, "")] == ["scorer-v1", "scorer-v2"]
    assert versions.numbers(rec) == ["1", "2"]


def test_a_variant_name_wins_over_a_number_and_unknown_ones_name_both_kinds() -> None:
    rec = record(("2", 1, 50), ("b", 2, 50))
    assert [v.name for v in versions.select(rec, "2")] == ["2"]
    with pytest.raises(errors.NotFound, match=r"no variant '7' and serves no model version '7' \(variants: 2, b; versions: 1, 2\)"):
        versions.select(rec, "7")
    with pytest.raises(errors.NotFound, match="no variant '-1'"):
        versions.select(rec, "-1")


def test_gateway_routes_a_number_to_its_variants_by_weight() -> None:
    random.seed(3)
    gw = gateway([r("a1", "v1"), r("b1", "v2a"), r("c1", "v2b")])
    rec = record(("v1", 1, 50), ("v2a", 2, 40), ("v2b", 2, 10))
    counts = collections.Counter(gw.pick(rec, "2").variant for _ in range(5000))
    assert set(counts) == {"v2a", "v2b"}
    assert abs(counts["v2a"] / 50 - 80) <= 3, counts
    assert {gw.pick(rec, "1").variant for _ in range(20)} == {"v1"}  # even against the weights
    assert gw.model_before_routing(rec, "2") == ("m", 2)
    with pytest.raises(errors.NotFound):
        gw.pick(rec, "3")
