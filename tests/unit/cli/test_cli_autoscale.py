"""Unit tests of the CLI's autoscaling flags (modelfleet.cli.autoscaleflags)."""

from __future__ import annotations

import pytest

from modelfleet.cli import cmd_deployments
from modelfleet.cli.main import build_parser


def test_autoscale_range_and_tuning_build_the_setting() -> None:
    args = build_parser().parse_args([
        "deployments", "start", "m", "--autoscale", "1..8", "--target-in-flight", "4", "--upscale-delay", "5s",
        "--downscale-delay", "1m",
    ])
    req, given = cmd_deployments.build_spec(args)
    a = req.autoscaling
    assert (a.enabled, a.min_allocations, a.max_allocations, a.target_in_flight_per_allocation) == (True, 1, 8, 4.0)
    assert (a.upscale_delay.seconds, a.downscale_delay.seconds) == (5, 60) and not a.HasField("scale_to_zero_after")
    assert "autoscaling" in given


def test_autoscale_goes_into_every_variant_and_off_disables_it() -> None:
    args = build_parser().parse_args(["deployments", "start", "d", "--variant", "a=50", "--variant", "b=50", "--autoscale", "0..3"])
    req, _ = cmd_deployments.build_spec(args)
    assert [v.autoscaling.max_allocations for v in req.variants] == [3, 3] and not req.HasField("autoscaling")
    args = build_parser().parse_args(["deployments", "update", "d", "--autoscale", "off"])
    req, given = cmd_deployments.build_spec(args, update=True)
    assert req.HasField("autoscaling") and not req.autoscaling.enabled and given == ["autoscaling"]
    args = build_parser().parse_args(["deployments", "start", "m"])
    req, given = cmd_deployments.build_spec(args)
    assert not req.HasField("autoscaling") and "autoscaling" not in given


@pytest.mark.parametrize("bad", ["8..1", "1-8", "x..2", ""])
def test_bad_ranges_are_usage_errors(bad: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["deployments", "start", "m", "--autoscale", bad])


def test_tuning_without_autoscale_is_refused() -> None:
    args = build_parser().parse_args(["deployments", "start", "m", "--target-in-flight", "4"])
    with pytest.raises(ValueError, match="--target-in-flight needs --autoscale"):
        cmd_deployments.build_spec(args)
