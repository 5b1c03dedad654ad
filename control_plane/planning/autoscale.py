"""The autoscaler's decision for one variant: how many allocations it wants.

Pure: no I/O, no clock (the caller passes `now`), no store, no grpc; the
caller keeps the `State` between calls (control_plane.reconcile.autoscaler
feeds it the workers' stats every second and records what it decides in
DeploymentRecord.autoscaled). The planner places an autoscaled variant as a
fixed-instance one with `instances` = its wanted count (`effective`), so a
scale-up is an ordinary placement and a scale-down stops the surplus
allocations, which drain (queued calls finish) before their workers exit.

Load: `Sample.in_flight` is the calls queued and running at the variant's
STARTED allocations (the workers' `number_of_pending_requests`, summed), so
per allocation it is in_flight / started. Rules:

- *high*: per allocation > target, or a worker rejected calls (a full queue)
  since the previous sample. After it stayed high for `upscale_delay`, and
  only when every wanted allocation has STARTED (a scale-up still starting is
  waited for), the wanted count grows *proportionally*: to
  ceil(in_flight / target), at least one more.
- *low*: per allocation < target × DOWN_FRACTION (0.5) and nothing rejected.
  After it stayed low for `downscale_delay` the wanted count drops by *one*
  (Ray Serve's conservative downscale). With the 0.5 band neither step can
  make a steady load cross the other threshold, so a steady load never flaps:
  after n -> n-1 the load per allocation is < target × n / (2(n-1)) <= target,
  and after a proportional step up it is still >= target / 2.
- Between the two bands nothing changes and both timers reset; every change
  restarts them, so the next step waits a whole delay at the new size.
- Always within [floor, min(max_allocations, capacity)], where capacity is
  the nodes that could hold one more allocation and floor is
  max(1, min_allocations), or 0 when scale_to_zero_after is set: then the
  last allocation stops after no call, in flight or answered, for that long,
  and a call held at a gateway (`Sample.held`) brings one back at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import duration_pb2

from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, deployments_pb2

DOWN_FRACTION = 0.5
RUNNING = records_pb2.DESIRED_STATE_RUNNING
_STARTED = common_pb2.ROUTING_STATE_STARTED


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


@dataclass(frozen=True, kw_only=True)
class Settings:
    """A variant's normalized autoscaling settings (control_plane.deployments.scaling applied the defaults)."""

    min_allocations: int
    max_allocations: int
    target: float
    upscale_delay_s: float
    downscale_delay_s: float
    scale_to_zero_after_s: float | None = None

    @classmethod
    def from_proto(cls, auto: deployments_pb2.Autoscaling) -> Settings:
        return cls(
            min_allocations=auto.min_allocations,
            max_allocations=auto.max_allocations,
            target=auto.target_in_flight_per_allocation or 1.0,
            upscale_delay_s=_seconds(auto.upscale_delay),
            downscale_delay_s=_seconds(auto.downscale_delay),
            scale_to_zero_after_s=_seconds(auto.scale_to_zero_after) if auto.HasField("scale_to_zero_after") else None,
        )

    @property
    def floor(self) -> int:
        """The fewest allocations it may have: 0 only when it scales to zero."""
        if self.min_allocations == 0 and self.scale_to_zero_after_s is not None:
            return 0
        return max(1, self.min_allocations)

    def initial(self) -> int:
        """The wanted count before any decision: min_allocations, at least one to start serving."""
        return max(1, self.min_allocations)


@dataclass(frozen=True, kw_only=True)
class Sample:
    """The variant's load at one moment.

    in_flight: calls queued and running at its STARTED allocations, summed.
    started: its allocations STARTED now.
    rejected: calls its workers rejected since the previous sample.
    answered: calls its workers answered since the previous sample.
    held: calls gateways hold for it, waiting for a first allocation.
    """

    in_flight: float
    started: int
    rejected: int = 0
    answered: int = 0
    held: int = 0


@dataclass(frozen=True)
class State:
    """What the decider remembers between samples: since when each condition has held (None: it does not now)."""

    above_since: float | None = None
    below_since: float | None = None
    idle_since: float | None = None


@dataclass(frozen=True)
class Decision:
    wanted: int
    state: State
    reason: str = ""  # why wanted changed; "" = it did not


def decide(settings: Settings, *, wanted: int, sample: Sample, now: float, state: State, capacity: int) -> Decision:
    """The wanted allocation count after one sample (rules in the module docstring).

    Args:
        settings: the variant's autoscaling settings.
        wanted: the allocations wanted until now.
        sample: the load now.
        now: the caller's clock, in seconds.
        state: what the previous call returned (State() the first time).
        capacity: the most allocations the fleet can hold for it now (its nodes that could take one).
    """
    ceiling = max(settings.floor, min(settings.max_allocations, capacity))
    if wanted < settings.floor or wanted > settings.max_allocations:
        new = min(max(wanted, max(1, settings.min_allocations)), settings.max_allocations)
        return Decision(new, State(), f"outside min_allocations {settings.min_allocations}..max_allocations "
                                      f"{settings.max_allocations}: {wanted} → {new}")
    if wanted == 0:
        if sample.held > 0 or sample.in_flight > 0:
            return Decision(1, State(), f"{max(sample.held, int(sample.in_flight))} call(s) waiting with no allocation: 0 → 1")
        return Decision(0, State())
    per = sample.in_flight / max(sample.started, 1)
    high = per > settings.target or sample.rejected > 0
    low = per < settings.target * DOWN_FRACTION and sample.rejected == 0
    idle = sample.in_flight == 0 and sample.rejected == 0 and sample.answered == 0
    state = State(
        above_since=(now if state.above_since is None else state.above_since) if high else None,
        below_since=(now if state.below_since is None else state.below_since) if low else None,
        idle_since=(now if state.idle_since is None else state.idle_since) if idle else None,
    )
    if high and state.above_since is not None and wanted < ceiling and sample.started >= wanted:
        held = now - state.above_since
        if held >= settings.upscale_delay_s:
            new = min(ceiling, max(wanted + 1, math.ceil(sample.in_flight / settings.target)))
            why = f"in-flight {per:.1f} per allocation > target {settings.target:g}"
            if sample.rejected:
                why = f"{sample.rejected} call(s) rejected (queue full), in-flight {per:.1f} per allocation"
            return Decision(new, State(), f"{why} for {held:.0f} s: {wanted} → {new}")
    if low and state.below_since is not None and wanted > max(1, settings.floor):
        held = now - state.below_since
        if held >= settings.downscale_delay_s:
            limit = settings.target * DOWN_FRACTION
            return Decision(
                wanted - 1, State(),
                f"in-flight {per:.1f} per allocation < {limit:g} (half the target {settings.target:g}) for {held:.0f} s: "
                f"{wanted} → {wanted - 1}",
            )
    after = settings.scale_to_zero_after_s
    if settings.floor == 0 and wanted == 1 and after is not None and state.idle_since is not None:
        held = now - state.idle_since
        if held >= after:
            return Decision(0, State(), f"no call for {held:.0f} s (scale_to_zero_after {after:g} s): 1 → 0")
    return Decision(wanted, state)


# ---- the planner's view of an autoscaled variant ------------------------------------
def wanted(record: records_pb2.DeploymentRecord, variant: deployments_pb2.VariantSpec) -> int | None:
    """The allocations the autoscaler wants for variant now; None if it does not autoscale."""
    if not variant.HasField("autoscaling"):
        return None
    entry = record.autoscaled.get(variant.name)
    settings = Settings.from_proto(variant.autoscaling)
    if entry is None:
        return settings.initial()
    return min(max(entry.wanted, settings.floor), settings.max_allocations)


def effective(record: records_pb2.DeploymentRecord, variant: deployments_pb2.VariantSpec) -> deployments_pb2.VariantSpec:
    """variant as the planner places it: an autoscaled one with `instances` = its wanted count.

    instances 0 on an autoscaled variant then means *scaled to zero* (not
    "every eligible node"): see `scaled_to_zero`.
    """
    count = wanted(record, variant)
    if count is None:
        return variant
    out = deployments_pb2.VariantSpec()
    out.CopyFrom(variant)
    out.instances = count
    return out


def scaled_to_zero(variant: deployments_pb2.VariantSpec) -> bool:
    """True for an `effective` variant that the autoscaler took to zero allocations."""
    return variant.HasField("autoscaling") and variant.instances == 0


def status(
    record: records_pb2.DeploymentRecord,
    variant: deployments_pb2.VariantSpec,
    allocations: Sequence[records_pb2.AllocationRecord],
) -> deployments_pb2.AutoscalingStatus | None:
    """Where an autoscaled variant stands (current = its allocations STARTED); None if it does not autoscale."""
    count = wanted(record, variant)
    if count is None:
        return None
    auto = variant.autoscaling
    out = deployments_pb2.AutoscalingStatus(
        current=sum(1 for a in allocations if a.variant == variant.name and a.desired == RUNNING and a.routing_state == _STARTED),
        target=count,
        min_allocations=auto.min_allocations,
        max_allocations=auto.max_allocations,
    )
    entry = record.autoscaled.get(variant.name)
    if entry is not None:
        out.reason = entry.reason
        if entry.HasField("last_change"):
            out.last_change.CopyFrom(entry.last_change)
    return out
