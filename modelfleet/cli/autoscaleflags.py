"""The autoscaling flags of `deployments start` and `deployments update`.

`--autoscale MIN..MAX` (e.g. `1..8`, `0..4`; `off` in an update) turns a
variant's allocations over to the control plane's autoscaler, with
`--target-in-flight N`, `--upscale-delay`, `--downscale-delay` and
`--scale-to-zero-after` tuning it (docs/operations.md, "Autoscaling"). The
settings go into every variant, or into the single-model `autoscaling` field;
in an update they are one mask path, `autoscaling`, and replace the old
settings as a whole.
"""

from __future__ import annotations

import argparse
import re

from google.protobuf import duration_pb2

from modelfleet.cli.parsing import arg_type, parse_duration
from modelfleet.v1 import deployments_pb2

_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")
_DURATION = arg_type(parse_duration, "duration")
TUNING = ("target_in_flight", "upscale_delay", "downscale_delay", "scale_to_zero_after")


def parse_range(text: str) -> tuple[int, int] | None:
    """`MIN..MAX` -> (min, max); `off` -> None (autoscaling disabled)."""
    if text.strip().lower() == "off":
        return None
    match = _RANGE.match(text)
    if not match:
        raise ValueError(f"invalid allocation range {text!r} (expected MIN..MAX, e.g. 1..8, or off)")
    low, high = int(match.group(1)), int(match.group(2))
    if low > high:
        raise ValueError(f"invalid allocation range {text!r}: MIN {low} is greater than MAX {high}")
    return low, high


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"invalid count {text!r}: must be > 0")
    return value


def add_flags(p: argparse.ArgumentParser, *, update: bool) -> None:
    """The autoscaling flags (default None = not given)."""
    p.add_argument("--autoscale", type=arg_type(parse_range, "range"), metavar="MIN..MAX", default=argparse.SUPPRESS,
                   help="allocations follow the load between MIN and MAX nodes (exclusive with --instances)"
                        + ("; off = back to a fixed count (every eligible node unless --instances)" if update else ""))
    p.add_argument("--target-in-flight", type=arg_type(_positive, "count"), metavar="N",
                   help="with --autoscale: calls in flight per allocation to aim at (default: --model-threads)")
    p.add_argument("--upscale-delay", type=_DURATION, metavar="DURATION",
                   help="with --autoscale: how long the load stays above the target before one more (default 10s)")
    p.add_argument("--downscale-delay", type=_DURATION, metavar="DURATION",
                   help="with --autoscale: how long the load stays below half the target before one less (default 60s)")
    p.add_argument("--scale-to-zero-after", type=_DURATION, metavar="DURATION",
                   help="with --autoscale 0..N: stop the last allocation after this long without calls")


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def settings(args: argparse.Namespace) -> deployments_pb2.Autoscaling | None:
    """The Autoscaling message the flags give, or None when --autoscale was not given.

    Raises ValueError when a tuning flag comes without --autoscale.
    """
    if not hasattr(args, "autoscale"):
        stray = [f"--{n.replace('_', '-')}" for n in TUNING if getattr(args, n, None) is not None]
        if stray:
            raise ValueError(f"{', '.join(stray)} needs --autoscale MIN..MAX")
        return None
    if args.autoscale is None:
        return deployments_pb2.Autoscaling(enabled=False)
    low, high = args.autoscale
    out = deployments_pb2.Autoscaling(
        enabled=True, min_allocations=low, max_allocations=high, target_in_flight_per_allocation=args.target_in_flight or 0.0
    )
    for name in ("upscale_delay", "downscale_delay", "scale_to_zero_after"):
        value = getattr(args, name, None)
        if value is not None:
            getattr(out, name).CopyFrom(_duration(value))
    return out


def apply(args: argparse.Namespace, req: deployments_pb2.StartDeploymentRequest, given: list[str]) -> None:
    """Put the flags' settings into req (every variant, or the single-model field) and name the mask path."""
    auto = settings(args)
    if auto is None:
        return
    if req.variants:
        for variant in req.variants:
            variant.autoscaling.CopyFrom(auto)
    else:
        req.autoscaling.CopyFrom(auto)
        given.append("autoscaling")
