"""Autoscaling settings of a variant: validation and defaults (transport-free).

This module owns what `VariantSpec.autoscaling` may say. A normalized spec
keeps autoscaling only when it is enabled, with every default applied
(upscale_delay 10 s, downscale_delay 60 s, target_in_flight_per_allocation =
the variant's model_threads); a disabled one is cleared. The fleet check
(`check_fleet`) needs the node views, so the service calls it beside its
capacity check. Errors name the field and the limit.

An allocation of a variant is one worker on one node (a routing table has
one entry per node), so a variant can never have more allocations than the
nodes that could hold one: that is the fleet's capacity for max_allocations.
There is no per-user allocation quota (the quota counts deployments).
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import duration_pb2

from control_plane import errors
from control_plane.planning import scheduler
from modelfleet.v1 import deployments_pb2

DEFAULT_UPSCALE_DELAY_S = 10.0
DEFAULT_DOWNSCALE_DELAY_S = 60.0
MAX_DELAY_S = 3600.0
MAX_SCALE_TO_ZERO_AFTER_S = 24 * 3600.0
MAX_ALLOCATIONS_LIMIT = 1000
MAX_TARGET_IN_FLIGHT = 1_000_000.0
# Scale to zero needs gateways that hold calls while a first allocation starts; until
# they do, a variant at zero would answer UNAVAILABLE, so the setting is refused.
SCALE_TO_ZERO = False


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def normalize(variant: deployments_pb2.VariantSpec, *, prefix: str) -> None:
    """Check variant.autoscaling and apply its defaults in place (rules in the module docstring)."""
    if not variant.HasField("autoscaling"):
        return
    auto = variant.autoscaling
    if not auto.enabled:
        variant.ClearField("autoscaling")
        return
    field = f"{prefix}autoscaling"
    if variant.instances > 0:
        raise errors.InvalidArgument(
            f"{prefix}instances {variant.instances} and {field} are mutually exclusive: "
            "give a fixed instances count or autoscaling min/max allocations, not both"
        )
    if not 1 <= auto.max_allocations <= MAX_ALLOCATIONS_LIMIT:
        raise errors.InvalidArgument(f"{field}.max_allocations {auto.max_allocations} is out of range: 1 to {MAX_ALLOCATIONS_LIMIT}")
    if auto.min_allocations < 0:
        raise errors.InvalidArgument(f"{field}.min_allocations {auto.min_allocations} must be >= 0")
    if auto.min_allocations > auto.max_allocations:
        raise errors.InvalidArgument(
            f"{field}.min_allocations {auto.min_allocations} is greater than max_allocations {auto.max_allocations}"
        )
    target = auto.target_in_flight_per_allocation or float(variant.model_threads or 1)
    if not 0 < target <= MAX_TARGET_IN_FLIGHT:  # also refuses NaN
        raise errors.InvalidArgument(
            f"{field}.target_in_flight_per_allocation {auto.target_in_flight_per_allocation:g} is out of range: "
            f"above 0, at most {MAX_TARGET_IN_FLIGHT:g} (0 = the variant's model_threads)"
        )
    auto.target_in_flight_per_allocation = target
    for name, default in (("upscale_delay", DEFAULT_UPSCALE_DELAY_S), ("downscale_delay", DEFAULT_DOWNSCALE_DELAY_S)):
        delay = getattr(auto, name)
        value = _seconds(delay) if auto.HasField(name) else default
        if not 0 <= value <= MAX_DELAY_S:
            raise errors.InvalidArgument(f"{field}.{name} {value:g}s is out of range: 0 to {MAX_DELAY_S:g}s")
        delay.FromNanoseconds(int(value * 1e9))
    if auto.HasField("scale_to_zero_after"):
        after = _seconds(auto.scale_to_zero_after)
        if not SCALE_TO_ZERO:
            raise errors.InvalidArgument(
                f"{field}.scale_to_zero_after is not supported yet: gateways cannot hold calls while a first "
                "allocation starts; leave it unset (min_allocations 0 then keeps one allocation)"
            )
        if auto.min_allocations != 0:
            raise errors.InvalidArgument(
                f"{field}.scale_to_zero_after needs min_allocations 0 (got {auto.min_allocations})"
            )
        if not 1 <= after <= MAX_SCALE_TO_ZERO_AFTER_S:
            raise errors.InvalidArgument(
                f"{field}.scale_to_zero_after {after:g}s is out of range: 1s to {MAX_SCALE_TO_ZERO_AFTER_S:g}s"
            )


def check_fleet(
    spec: deployments_pb2.StartDeploymentRequest,
    *,
    nodes: Sequence[scheduler.NodeView],
    model_bytes: Sequence[int],
) -> None:
    """max_allocations of every autoscaled variant is at most the nodes that could ever hold one.

    model_bytes: each variant's model size, in the order of spec.variants.
    """
    several = len(spec.variants) > 1
    for i, (variant, size) in enumerate(zip(spec.variants, model_bytes)):
        if not variant.HasField("autoscaling"):
            continue
        demand = scheduler.demand_for(variant, model_bytes=size)
        fit = sum(1 for n in nodes if scheduler.could_ever_hold(demand, n))
        wanted = variant.autoscaling.max_allocations
        if wanted > fit:
            prefix = f"variants[{i}]." if several else ""
            raise errors.InvalidArgument(
                f"{prefix}autoscaling.max_allocations {wanted} is beyond the fleet's capacity: {fit} node(s) could hold "
                "an allocation of this variant (one allocation per node)"
            )
