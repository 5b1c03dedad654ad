"""Lifecycle derivations of the control plane, in one place.

Everything a client sees as a state is derived here from routing states (the
per-node truth the agents report) and the deployment's intent, by pure
functions that the reconciler calls on every tick and the tests drive table
by table. Nothing here stores, sleeps or logs.

- `allocation_state`: per variant, from its routes (DESIGN.md "allocation state").
- `deployment_status`: per deployment, from per-variant counts (`VariantView`).
- `ALLOWED_ROUTE_TRANSITIONS` / `route_transition`: the one table of how the
  control plane's view of a route may change, and the check every writer
  calls (it raises `IllegalTransition`).
- `STATUS_TRANSITIONS` / `status_transition`: every status change the
  derivation can produce (each one recorded as an event), and its check.

The states are the protobuf enums themselves (common_pb2.RoutingState, ...),
so no second Enum has to be kept in step with the wire contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2

RoutingState = common_pb2.RoutingState
AllocationState = common_pb2.AllocationState
DeploymentStatus = common_pb2.DeploymentStatus
DesiredState = records_pb2.DesiredState

_STARTING = common_pb2.ROUTING_STATE_STARTING
_STARTED = common_pb2.ROUTING_STATE_STARTED
_STOPPING = common_pb2.ROUTING_STATE_STOPPING
_STOPPED = common_pb2.ROUTING_STATE_STOPPED
_FAILED = common_pb2.ROUTING_STATE_FAILED
_UNSPECIFIED = common_pb2.ROUTING_STATE_UNSPECIFIED
_LIVE = frozenset({_STARTING, _STARTED, _STOPPING})  # a worker may still run


# ---- routes -----------------------------------------------------------------------
# Every change of the control plane's view of a route, and why. Reports are
# snapshots (coalesced for REPORT_COALESCE, and a full registration after a
# stream break or an agent restart reports whatever the agent runs now), so
# a move here may skip states the agent went through. A same-state write is
# not a move (only the reason or address changes) and is allowed for every
# state but UNSPECIFIED; nothing ever moves back to UNSPECIFIED.
ALLOWED_ROUTE_TRANSITIONS: frozenset[tuple[RoutingState, RoutingState]] = frozenset(
    {
        (_UNSPECIFIED, _STARTING),  # a new allocation record
        (_STARTING, _STARTED),
        (_STARTING, _FAILED),  # the agent gave up, or the node was lost
        (_STARTING, _STOPPING),  # a stop
        (_STARTED, _STOPPING),  # a stop
        (_STARTED, _FAILED),  # the agent gave up, or the node was lost
        (_STARTED, _STARTING),  # the agent restarts a crashed worker; a registration without it
        (_STOPPING, _STOPPED),
        (_STOPPING, _FAILED),  # the node was lost while draining
        (_FAILED, _STARTING),  # restart (agent retry, registration, redeploy)
        (_FAILED, _STARTED),  # a lost node came back with its worker still running
        (_FAILED, _STOPPING),  # ... and that worker is no longer wanted
        (_STOPPED, _STARTING),  # a worker that stopped on its own is started again
        # The agent reports a removed worker by its absence, so the control
        # plane can see STOPPED without having seen STOPPING.
        (_STARTING, _STOPPED),
        (_STARTED, _STOPPED),
        (_FAILED, _STOPPED),
        # An agent killed while draining (it had reported STOPPING) restarts
        # and starts or adopts the worker again; its registration says so.
        (_STOPPING, _STARTING),
        (_STOPPING, _STARTED),
        # A worker that stopped on its own (reported STOPPED) is restarted by
        # its agent; across a stream break the control plane sees the result,
        # and a restart can fail at once (no GPU left) within one coalesced report.
        (_STOPPED, _STARTED),
        (_STOPPED, _FAILED),
        # A stop asked of a route the agent reported STOPPED (graceful agent
        # shutdown), or a stopped allocation restarted by an agent that has not
        # applied the stop yet (reported STARTING/STARTED, recorded STOPPING).
        (_STOPPED, _STOPPING),
    }
)


class IllegalTransition(ValueError):
    """A lifecycle move that its transition table does not contain."""


RouteTransitionError = IllegalTransition


def check_route_transition(old: RoutingState, new: RoutingState) -> bool:
    """True if the control plane's view of a route may change from old to new (same state: a no-op)."""
    if old == new:
        return new != _UNSPECIFIED
    return (old, new) in ALLOWED_ROUTE_TRANSITIONS


def route_transition(old: RoutingState, new: RoutingState) -> RoutingState:
    """The one check of a route change: return new if old -> new is allowed, else raise IllegalTransition."""
    if not check_route_transition(old, new):
        raise IllegalTransition(
            f"routing state cannot change from {common_pb2.RoutingState.Name(old)} "
            f"to {common_pb2.RoutingState.Name(new)}"
        )
    return new


# ---- allocation state ---------------------------------------------------------------
def allocation_state(routes: Sequence[RoutingState], *, target_count: int, stopping: bool) -> AllocationState:
    """The allocation state of one variant.

    Args:
        routes: the routing state of each of the variant's allocations (the
            wanted ones; when stopping, every one that remains).
        target_count: how many nodes the scheduler chose for it.
        stopping: the variant (or its deployment) is being stopped.

    Returns:
        When stopping: STOPPING while a route is still starting, started or
        stopping, then STOPPED. Else STARTING while no route is STARTED;
        FULLY_ALLOCATED once STARTED routes >= target_count > 0; else STARTED.
    """
    if stopping:
        if any(r in _LIVE for r in routes):
            return common_pb2.ALLOCATION_STATE_STOPPING
        return common_pb2.ALLOCATION_STATE_STOPPED
    started = sum(1 for r in routes if r == _STARTED)
    if started == 0:
        return common_pb2.ALLOCATION_STATE_STARTING
    if target_count > 0 and started >= target_count:
        return common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED
    return common_pb2.ALLOCATION_STATE_STARTED


# ---- deployment status --------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class VariantView:
    """Counts of one variant, the input of deployment_status.

    target_count: nodes the scheduler chose. wanted: instances asked (for
    instances 0, "every eligible node", wanted = target_count). started /
    starting / failed / stopping: routes in that routing state. name: the
    variant's name, only for reasons. replacing: old allocations of a rolling
    update that still serve this variant (not counted in started): while
    they do, a variant not started yet is being replaced, not a problem.
    """

    target_count: int
    wanted: int
    started: int = 0
    starting: int = 0
    failed: int = 0
    stopping: int = 0
    name: str = ""
    replacing: int = 0


def variant_view(routes: Sequence[RoutingState], *, target_count: int, instances: int, name: str = "") -> VariantView:
    """Count routes into a VariantView; instances 0 means wanted = target_count."""
    return VariantView(
        target_count=target_count,
        wanted=instances if instances > 0 else target_count,
        started=sum(1 for r in routes if r == _STARTED),
        starting=sum(1 for r in routes if r == _STARTING),
        failed=sum(1 for r in routes if r == _FAILED),
        stopping=sum(1 for r in routes if r == _STOPPING),
        name=name,
    )


# The deployment status and its reason, by this table (first match wins):
#
# | desired | condition                                                   | status     |
# |---------|-------------------------------------------------------------|------------|
# | STOPPED | a route starting, started or stopping (failed = stopped)    | STOPPING   |
# | STOPPED | otherwise                                                   | STOPPED    |
# | RUNNING | serving, and every variant has started >= target_count > 0  | RUNNING    |
# |         | and target_count >= wanted, and no rolling update is left   |            |
# | RUNNING | serving, and a variant has failed routes, or (none of its   | CONCERNING |
# |         | routes starting and) it is started nowhere or has fewer     |            |
# |         | targets than wanted                                         |            |
# | RUNNING | serving, otherwise (routes still starting)                  | DEPLOYING  |
# | RUNNING | not serving, ever_served                                    | ABNORMAL   |
# | RUNNING | not serving, >= 1 target, all targets failed, none starting | FAILED     |
# | RUNNING | not serving, otherwise                                      | DEPLOYING  |
#
# "Serving" means some variant has a STARTED route, or `also_serving` > 0
# (old allocations of a rolling update, or of variants an update removed,
# that still serve; they are not in `variants`). started may exceed
# target_count while surplus routes drain after a scale-down; that still
# counts as fully allocated, as in allocation_state.
def deployment_status(
    *,
    desired: DesiredState,
    variants: Sequence[VariantView],
    ever_served: bool,
    waiting_reason: str = "",
    failure_reasons: Sequence[str] = (),
    also_serving: int = 0,
    rolling: bool = False,
) -> tuple[DeploymentStatus, str]:
    """The deployment status and its reason, by the table above.

    Args:
        desired: the deployment's intent (UNSPECIFIED is a caller bug: ValueError).
        variants: one view per variant.
        ever_served: some route reached STARTED since the last start.
        waiting_reason: the reason shown while DEPLOYING (e.g. "waiting for
            capacity: ..."); default: counts of started targets.
        failure_reasons: the failed routes' reasons, appended (deduplicated)
            to the FAILED reason.
        also_serving: STARTED routes outside `variants` (see above).
        rolling: a rolling update is in progress (old allocations remain):
            DEPLOYING with waiting_reason rather than RUNNING.

    Returns:
        (status, reason); reason is "" for RUNNING and STOPPED.
    """
    if desired == records_pb2.DESIRED_STATE_STOPPED:
        return _stopped_status(variants)
    if desired != records_pb2.DESIRED_STATE_RUNNING:
        raise ValueError(f"desired state {desired} is neither RUNNING nor STOPPED")
    if any(v.started for v in variants) or also_serving > 0:
        return _serving_status(variants, waiting_reason=waiting_reason, rolling=rolling)
    return _unserved_status(variants, ever_served=ever_served, waiting_reason=waiting_reason, failure_reasons=failure_reasons)


def _stopped_status(variants: Sequence[VariantView]) -> tuple[DeploymentStatus, str]:
    """Desired STOPPED: STOPPING while a route starts, serves or drains, else STOPPED."""
    running = sum(v.starting + v.started + v.stopping for v in variants)
    if running:
        return common_pb2.DEPLOYMENT_STATUS_STOPPING, f"stopping: {_routes(running)} not stopped yet"
    return common_pb2.DEPLOYMENT_STATUS_STOPPED, ""


def _serving_status(variants: Sequence[VariantView], *, waiting_reason: str, rolling: bool) -> tuple[DeploymentStatus, str]:
    """Desired RUNNING and serving: RUNNING, CONCERNING or DEPLOYING."""
    started = sum(v.started for v in variants)
    if not rolling and started > 0 and all(v.target_count > 0 and v.started >= v.target_count >= v.wanted for v in variants):
        return common_pb2.DEPLOYMENT_STATUS_RUNNING, ""
    problems = [p for v in variants for p in _problems(v)]
    if problems:
        return common_pb2.DEPLOYMENT_STATUS_CONCERNING, "serving, but " + "; ".join(problems)
    targets = sum(v.target_count for v in variants)
    return common_pb2.DEPLOYMENT_STATUS_DEPLOYING, waiting_reason or f"{started} of {_targets(targets)} started"


def _unserved_status(
    variants: Sequence[VariantView], *, ever_served: bool, waiting_reason: str, failure_reasons: Sequence[str]
) -> tuple[DeploymentStatus, str]:
    """Desired RUNNING and nothing serves: ABNORMAL, FAILED or DEPLOYING."""
    starting = sum(v.starting for v in variants)
    failed = sum(v.failed for v in variants)
    targets = sum(v.target_count for v in variants)
    if ever_served:
        return (
            common_pb2.DEPLOYMENT_STATUS_ABNORMAL,
            f"was serving, now no route is started ({failed} failed, {starting} starting)",
        )
    if targets > 0 and starting == 0 and failed >= targets:
        reason = f"could not start on any node: {failed} of {_targets(targets)} failed"
        distinct = list(dict.fromkeys(r for r in failure_reasons if r))
        if distinct:
            reason += " (" + "; ".join(distinct) + ")"
        return common_pb2.DEPLOYMENT_STATUS_FAILED, reason
    if waiting_reason:
        return common_pb2.DEPLOYMENT_STATUS_DEPLOYING, waiting_reason
    if targets == 0:
        return common_pb2.DEPLOYMENT_STATUS_DEPLOYING, "waiting for a node to place it on"
    return common_pb2.DEPLOYMENT_STATUS_DEPLOYING, f"0 of {_targets(targets)} started"


# ---- status transitions ----------------------------------------------------------------
_DEPLOYING = common_pb2.DEPLOYMENT_STATUS_DEPLOYING
_RUNNING = common_pb2.DEPLOYMENT_STATUS_RUNNING
_CONCERNING = common_pb2.DEPLOYMENT_STATUS_CONCERNING
_ABNORMAL = common_pb2.DEPLOYMENT_STATUS_ABNORMAL
_FAILED_STATUS = common_pb2.DEPLOYMENT_STATUS_FAILED
_STOPPING_STATUS = common_pb2.DEPLOYMENT_STATUS_STOPPING
_STOPPED_STATUS = common_pb2.DEPLOYMENT_STATUS_STOPPED
_UNSPECIFIED_STATUS = common_pb2.DEPLOYMENT_STATUS_UNSPECIFIED

# Every change deployment_status can produce between two ticks, and why.
# The status writer checks each change with status_transition: a pair that
# is not here is a derivation bug and raises; tests drive each pair.
STATUS_TRANSITIONS: frozenset[tuple[DeploymentStatus, DeploymentStatus]] = frozenset(
    {
        (_UNSPECIFIED_STATUS, _DEPLOYING),  # a record written before its first tick
        (_DEPLOYING, _RUNNING),  # every target started
        (_DEPLOYING, _CONCERNING),  # some started, others failed or could not be placed
        (_DEPLOYING, _FAILED_STATUS),  # every target failed
        (_DEPLOYING, _ABNORMAL),  # served (e.g. old workers of an update), now nothing does
        (_RUNNING, _DEPLOYING),  # an update: new workers or a new variant starting
        (_RUNNING, _CONCERNING),  # a route failed or a node was lost
        (_RUNNING, _ABNORMAL),  # every route failed
        (_CONCERNING, _RUNNING),  # repaired (node back, replacement started)
        (_CONCERNING, _DEPLOYING),  # a replacement is starting
        (_CONCERNING, _ABNORMAL),
        (_ABNORMAL, _RUNNING),
        (_ABNORMAL, _CONCERNING),
        (_ABNORMAL, _DEPLOYING),  # an update while nothing serves
        (_FAILED_STATUS, _DEPLOYING),  # an update or a node join gives it new targets
        (_FAILED_STATUS, _RUNNING),
        (_FAILED_STATUS, _CONCERNING),
    }
    # a stop, from any status; STOPPED directly when nothing was running
    | {(s, _STOPPING_STATUS) for s in (_DEPLOYING, _RUNNING, _CONCERNING, _ABNORMAL, _FAILED_STATUS)}
    | {(s, _STOPPED_STATUS) for s in (_DEPLOYING, _RUNNING, _CONCERNING, _ABNORMAL, _FAILED_STATUS, _STOPPING_STATUS)}
    | {(_STOPPED_STATUS, _DEPLOYING), (_STOPPING_STATUS, _DEPLOYING)}  # started again
)


def check_status_transition(old: DeploymentStatus, new: DeploymentStatus) -> bool:
    """True if a derived status may change from old to new (see STATUS_TRANSITIONS; same status: a no-op)."""
    return old == new or (old, new) in STATUS_TRANSITIONS


def status_transition(old: DeploymentStatus, new: DeploymentStatus) -> DeploymentStatus:
    """The one check of a status change: return new if old -> new is allowed, else raise IllegalTransition."""
    if not check_status_transition(old, new):
        raise IllegalTransition(
            f"deployment status cannot change from {common_pb2.DeploymentStatus.Name(old)} "
            f"to {common_pb2.DeploymentStatus.Name(new)}"
        )
    return new


def _problems(v: VariantView) -> list[str]:
    """Why a variant makes a serving deployment CONCERNING (empty: it does not)."""
    facts: list[str] = []
    if v.replacing and not v.failed:
        return []  # a rolling update in progress: its old allocations serve
    missing = v.starting == 0 and v.target_count < v.wanted
    if v.starting == 0 and v.started == 0:
        facts.append("started on no node")
    if v.failed:
        facts.append(f"{v.failed} of {_targets(v.target_count)} failed")
    if missing:
        facts.append(f"placed on {v.target_count} of {v.wanted} wanted nodes")
    if not facts:
        return []
    label = f"variant {v.name!r}: " if v.name else ""
    return [label + ", ".join(facts)]


def _routes(n: int) -> str:
    return "1 route" if n == 1 else f"{n} routes"


def _targets(n: int) -> str:
    return "1 target" if n == 1 else f"{n} targets"
