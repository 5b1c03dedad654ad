"""GatewayReports (control_plane.routefeed.reports) and DurationHistogram: pure, clocks injected."""

from __future__ import annotations

import pytest

from control_plane import errors
from control_plane.gateway.stats import DurationHistogram
from control_plane.routefeed.reports import GatewayReports
from modelfleet.v1 import common_pb2, gateways_pb2


def _report(gid: str, n: int, *, revision: int = 5) -> gateways_pb2.ReportGatewayStatsRequest:
    out = gateways_pb2.ReportGatewayStatsRequest(gateway_id=gid, address=f"{gid}:1", epoch=7, revision=revision)
    out.deployments.add(deployment_id="d", stats=common_pb2.InferenceStats(inference_count=n))
    return out


def test_a_gateway_silent_past_the_timeout_drops_out_of_the_stats_and_shows_not_live() -> None:
    clock = [100.0]
    reports = GatewayReports(
        embedded=lambda d: common_pb2.InferenceStats(inference_count=1), timeout=3, now=lambda: clock[0]
    )
    reports.record(_report("a", 2))
    reports.record(_report("b", 4, revision=3))
    assert [(g.gateway_id, g.stats.inference_count) for g in reports.deployment("d")] == [("embedded", 1), ("a", 2), ("b", 4)]
    clock[0] = 102.0
    reports.record(_report("a", 3))
    clock[0] = 104.0
    assert [g.gateway_id for g in reports.deployment("d")] == ["embedded", "a"]
    listed = {g.gateway_id: g for g in reports.gateways(epoch=7, revision=5, watching=["a"])}
    assert listed["a"].live and listed["a"].watching and listed["a"].behind == 0
    assert not listed["b"].live and listed["b"].behind == 2 and listed["embedded"].embedded
    assert reports.gateways(epoch=8, revision=5, watching=[])[1].behind == -1  # another epoch


def test_a_report_without_a_gateway_id_or_claiming_the_embedded_one_is_refused() -> None:
    reports = GatewayReports()
    with pytest.raises(errors.InvalidArgument, match="gateway_id"):
        reports.record(gateways_pb2.ReportGatewayStatsRequest())
    with pytest.raises(errors.InvalidArgument, match="embedded"):
        reports.record(gateways_pb2.ReportGatewayStatsRequest(gateway_id="embedded"))


def test_the_duration_histogram_is_cumulative_and_ends_with_inf() -> None:
    h = DurationHistogram(buckets=(0.1, 1.0))
    for s in (0.05, 0.5, 0.5, 5.0):
        h.observe("d", s)
    buckets, total = h.snapshot()["d"]
    assert buckets == [("0.1", 1), ("1.0", 3), ("+Inf", 4)]
    assert total == pytest.approx(6.05)
