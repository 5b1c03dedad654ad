"""The deployment planner: what one reconcile tick does for a deployment.

This module owns the decision; the reconciler applies it
(control_plane.reconcile.reconciler) and the dry run renders it
(control_plane.deployments.preview), so a preview promises exactly what a
tick then writes. Pure: no I/O, no clock, no store, no grpc. Placement is
control_plane.planning.scheduler, the make-before-break rules are
control_plane.planning.rollout; this module turns their decisions into
actions on allocation records:

- `Start`: a new allocation of a variant on a node (its spec, no id yet);
- `Stop`: an allocation leaves the desired set (its reason; on a lost node
  nobody is left to confirm, so the record is removed instead);
- `Fail`: an allocation on a lost node that is no target any more: its route
  becomes FAILED "node lost" and, when it is replaced elsewhere, it leaves the
  desired set (the node stops it when it returns).

Inputs are what the reconciler reads, taken by the caller: the deployment
record and its allocation records (read only), the variants' models, the
node views (capacity, usage and readiness: control_plane.fleet.nodeviews),
the drained (cordoned) nodes and the lost nodes among the allocations'
nodes. `plan_variant` plans one variant in O(nodes + its allocations), so a
caller that plans only the variants whose inputs changed (the reconciler's
quiet-plan memo) keeps a tick off O(nodes x deployments); `plan_deployment`
plans every variant in order, each one seeing the usage of the allocations
the previous ones start, then the variants an update removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from control_plane.planning import autoscale, rollout, scheduler
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, common_pb2, deployments_pb2, models_pb2

RUNNING = records_pb2.DESIRED_STATE_RUNNING
STOPPED = records_pb2.DESIRED_STATE_STOPPED
_STARTING = common_pb2.ROUTING_STATE_STARTING
_STARTED = common_pb2.ROUTING_STATE_STARTED
_STOPPED = common_pb2.ROUTING_STATE_STOPPED
_FAILED = common_pb2.ROUTING_STATE_FAILED

NODE_LOST = "node lost"
DRAINED = "node drained; moved to another node"
RETIRED = "variant removed by an update"
DEPLOYMENT_STOPPED = "deployment stopped"
SCALED_DOWN = "scaled down by the autoscaler"
SCALED_TO_ZERO = "scaled to zero by the autoscaler"

Models = Mapping[tuple[str, int], models_pb2.Model]  # (model_id, version) -> model; absent: gone


@dataclass(frozen=True, kw_only=True)
class Start:
    """A new allocation of `variant` on `node_id`, running `spec` (no allocation id, no worker token)."""

    node_id: str
    variant: str
    spec: agent_pb2.AllocationSpec
    demand: scheduler.Demand


@dataclass(frozen=True, kw_only=True)
class Stop:
    """An allocation leaves the desired set. node_lost: its record is removed (nobody can confirm the stop)."""

    allocation_id: str
    node_id: str
    reason: str
    node_lost: bool = False


@dataclass(frozen=True, kw_only=True)
class Fail:
    """An allocation on a lost node that is no target any more.

    route_failed: its route becomes FAILED "node lost" (False: it stopped
    gracefully and stays STOPPED, or it already is FAILED "node lost").
    leave: it leaves the desired set (replaced elsewhere; stopped when the node returns).
    """

    allocation_id: str
    node_id: str
    route_failed: bool
    leave: bool


@dataclass(frozen=True, kw_only=True)
class VariantActions:
    """What one tick does for one variant.

    decision: the rolling-update decision (placement, start_on, stop, rollout); None: the model is gone.
    replacing: stale allocations that keep serving now and are stopped by a
        later tick, once their replacements have started (rollout rules 2-4).
    progress: for rollout.ready_to_retire.
    waiting: it may take more nodes, or a rolling update or drain waits for capacity
        (planned again when the node views' epoch moves).
    quiet: it changes nothing and no allocation of it is on a lost node: the
        same inputs give the same plan.
    error: why it could not be planned ("" if it was).
    """

    variant: str
    decision: rollout.VariantPlan | None
    progress: rollout.Progress
    starts: tuple[Start, ...] = ()
    stops: tuple[Stop, ...] = ()
    fails: tuple[Fail, ...] = ()
    replacing: tuple[str, ...] = ()
    waiting: bool = False
    quiet: bool = False
    error: str = ""

    @property
    def placement(self) -> scheduler.Placement | None:
        return self.decision.placement if self.decision is not None else None


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What one tick does for one deployment.

    variants: one entry per variant of the spec, in order (none while the deployment is stopped).
    retire: allocations of removed variants (or of a stopped deployment) that stop now.
    retiring: allocations of removed variants that keep serving until the remaining variants have started.
    rollout: what the rolling update waits for ("" if nothing).
    """

    deployment_id: str
    variants: tuple[VariantActions, ...]
    retire: tuple[Stop, ...] = ()
    retiring: tuple[str, ...] = ()
    rollout: str = ""

    def starts(self) -> list[Start]:
        return [s for v in self.variants for s in v.starts]

    def stops(self) -> list[Stop]:
        return [s for v in self.variants for s in v.stops] + list(self.retire)

    def fails(self) -> list[Fail]:
        return [f for v in self.variants for f in v.fails]


def plan_deployment(
    *,
    record: records_pb2.DeploymentRecord,
    allocations: Sequence[records_pb2.AllocationRecord],
    models: Models,
    node_views: Mapping[str, scheduler.NodeView],
    cordoned: Collection[str],
    lost_nodes: Collection[str],
) -> Plan:
    """Plan one deployment (rules in the module docstring and control_plane.planning.rollout).

    Args:
        record: the deployment (its spec and desired state).
        allocations: every allocation record of the deployment.
        models: the variants' models by (model_id, version); a missing one is gone.
        node_views: every node's view; not changed (the plan works on a copy).
        cordoned: the drained nodes (their allocations are replaced make-before-break).
        lost_nodes: the LOST nodes among the allocations' nodes.
    """
    if record.desired != RUNNING:
        return Plan(deployment_id=record.deployment_id, variants=(), retire=plan_stop_all(allocations, lost_nodes))
    views = dict(node_views)
    planned: list[VariantActions] = []
    for spec_variant in record.spec.variants:
        variant = autoscale.effective(record, spec_variant)
        actions = plan_variant(
            deployment_id=record.deployment_id,
            variant=variant,
            model=models.get((variant.model_id, variant.model_version)),
            allocations=allocations,
            node_views=views,
            cordoned=cordoned,
            lost_nodes=lost_nodes,
            max_unavailable=record.spec.max_unavailable,
        )
        planned.append(actions)
        for start in actions.starts:
            views[start.node_id] = with_usage(views[start.node_id], start.demand)
    names = {v.name for v in record.spec.variants}
    retiring = [a for a in allocations if a.desired == RUNNING and a.variant not in names]
    retire, waits = plan_retiring(retiring, progress=[v.progress for v in planned], lost_nodes=lost_nodes)
    reasons = [v.decision.rollout for v in planned if v.decision is not None and v.decision.rollout]
    stopping = {s.allocation_id for s in retire}
    return Plan(
        deployment_id=record.deployment_id,
        variants=tuple(planned),
        retire=retire,
        retiring=tuple(a.allocation_id for a in retiring if a.allocation_id not in stopping),
        rollout="; ".join(reasons + ([waits] if waits else [])),
    )


def plan_retiring(
    retiring: Sequence[records_pb2.AllocationRecord],
    *,
    progress: Sequence[rollout.Progress],
    lost_nodes: Collection[str],
) -> tuple[tuple[Stop, ...], str]:
    """The wanted allocations of removed variants: which stop now, and what they wait for ("" nothing).

    They all stop once rollout.ready_to_retire(progress); until then only
    those on lost nodes (nobody serves from there) and the rest keep serving.
    """
    if not retiring:
        return (), ""
    ready = rollout.ready_to_retire(progress)
    stops = tuple(_stop(a, RETIRED, lost_nodes) for a in retiring if ready or a.node_id in lost_nodes)
    if ready:
        return stops, ""
    gone = ", ".join(sorted({repr(a.variant) for a in retiring}))
    return stops, f"removed variant(s) {gone} keep serving until the remaining variants have started"


def plan_variant(
    *,
    deployment_id: str,
    variant: deployments_pb2.VariantSpec,
    model: models_pb2.Model | None,
    allocations: Sequence[records_pb2.AllocationRecord],
    node_views: Mapping[str, scheduler.NodeView],
    cordoned: Collection[str],
    lost_nodes: Collection[str],
    max_unavailable: int = 0,
) -> VariantActions:
    """Plan one variant of a running deployment.

    Args:
        deployment_id: the deployment's id (the spec of new allocations names it).
        variant: the variant as the spec has it now; an autoscaled one as
            autoscale.effective gives it (instances = its wanted count).
        model: its model, None if it is gone (nothing is planned).
        allocations: the deployment's allocation records (other variants' are ignored).
        node_views: every node's view, usage of every allocation included.
        cordoned: the drained nodes.
        lost_nodes: the LOST nodes among the allocations' nodes.
        max_unavailable: old allocations a rolling update may stop before
            their replacements started (the deployment's setting).
    """
    if model is None:
        return _model_gone(variant)
    mine = [a for a in allocations if a.variant == variant.name]
    if autoscale.scaled_to_zero(variant):
        return _scaled_to_zero(variant, mine, lost_nodes)
    template = rollout.allocation_spec(deployment_id=deployment_id, variant=variant, model=model)
    demand = scheduler.demand_for(variant, model_bytes=model.model_bytes)
    running = [a for a in mine if a.desired == RUNNING]
    # on a drained (cordoned) node an allocation is stale: replaced make-before-break like an old spec
    members = [
        _member(a, fresh=rollout.is_fresh(a.spec, template) and a.node_id not in cordoned, lost=a.node_id in lost_nodes)
        for a in running
    ]
    draining = [a for a in mine if a.desired == STOPPED and a.routing_state != _FAILED and a.node_id not in lost_nodes]
    decision = rollout.plan_variant(
        demand,
        list(node_views.values()),
        members,
        draining=len(draining),
        draining_stale=sum(1 for a in draining if not rollout.is_fresh(a.spec, template)),
        name=variant.name,
        max_unavailable=max_unavailable,
    )
    surplus = SCALED_DOWN if variant.HasField("autoscaling") else None
    stops = tuple(
        _stop(a, DRAINED if a.node_id in cordoned else _stop_reason(decision.stop[a.allocation_id], surplus), lost_nodes)
        for a in running
        if a.allocation_id in decision.stop
    )
    live_stale = [m for m in members if not m.fresh and not m.lost and m.allocation_id not in decision.stop]
    return VariantActions(
        variant=variant.name,
        decision=decision,
        progress=_progress(variant, members, decision),
        starts=tuple(Start(node_id=n, variant=variant.name, spec=template, demand=demand) for n in decision.start_on),
        stops=stops,
        fails=_fails(variant, running, members, targets=set(decision.placement.targets)),
        replacing=tuple(m.allocation_id for m in live_stale),
        waiting=_is_open(variant, decision) or bool(decision.rollout) or any(not m.fresh for m in members),
        quiet=not decision.start_on and not decision.stop and not any(a.node_id in lost_nodes for a in mine),
    )


def not_chosen_now(
    *,
    deployment_id: str,
    variant: deployments_pb2.VariantSpec,
    model: models_pb2.Model,
    allocations: Sequence[records_pb2.AllocationRecord],
    node_views: Mapping[str, scheduler.NodeView],
    cordoned: Collection[str],
) -> Mapping[str, str]:
    """Why each node is not a target of the variant now, one reason per node.

    The reconciler keeps placements with their reasons counted only (a
    reason per node of every variant would be deployments x nodes); this
    places the one variant again, as plan_variant does, for a caller who
    asks for the full list.
    """
    template = rollout.allocation_spec(deployment_id=deployment_id, variant=variant, model=model)
    fresh_nodes = {
        a.node_id
        for a in allocations
        if a.variant == variant.name and a.desired == RUNNING and a.node_id not in cordoned and rollout.is_fresh(a.spec, template)
    }
    demand = scheduler.demand_for(variant, model_bytes=model.model_bytes)
    return scheduler.place(demand, list(node_views.values()), current=fresh_nodes).not_chosen


def _stop_reason(reason: str, surplus: str | None) -> str:
    """An autoscaled variant's allocation beyond its wanted count stops as scaled down."""
    return surplus if surplus is not None and reason == rollout.NO_LONGER_A_TARGET else reason


def _scaled_to_zero(
    variant: deployments_pb2.VariantSpec, mine: Sequence[records_pb2.AllocationRecord], lost_nodes: Collection[str]
) -> VariantActions:
    """An autoscaled variant at zero allocations: every wanted one stops, nothing is placed."""
    stops = tuple(_stop(a, SCALED_TO_ZERO, lost_nodes) for a in mine if a.desired == RUNNING)
    decision = rollout.VariantPlan(placement=scheduler.Placement(targets=(), not_chosen={}), start_on=(), stop={})
    return VariantActions(
        variant=variant.name,
        decision=decision,
        progress=rollout.Progress(weight=variant.weight, started=0, starting=0),
        stops=stops,
        quiet=not stops and not any(a.node_id in lost_nodes for a in mine),
    )


def _model_gone(variant: deployments_pb2.VariantSpec) -> VariantActions:
    return VariantActions(
        variant=variant.name,
        decision=None,
        progress=rollout.Progress(weight=variant.weight, started=0, starting=0),
        error=f"model {variant.model_id} v{variant.model_version} is gone",
    )


def with_usage(view: scheduler.NodeView, demand: scheduler.Demand) -> scheduler.NodeView:
    """view with one more allocation of demand counted in its usage."""
    return dataclasses.replace(
        view,
        used_cpus=view.used_cpus + demand.cpus,
        used_memory=view.used_memory + demand.memory_bytes,
        used_gpus=view.used_gpus + demand.gpus,
    )


def _fails(
    variant: deployments_pb2.VariantSpec,
    running: Sequence[records_pb2.AllocationRecord],
    members: Sequence[rollout.Member],
    *,
    targets: Collection[str],
) -> tuple[Fail, ...]:
    out: list[Fail] = []
    for alloc, member in zip(running, members):
        if not member.lost or alloc.node_id in targets:
            continue
        graceful = alloc.routing_state == _STOPPED  # it said so: it stays STOPPED
        route_failed = not graceful and (alloc.routing_state, alloc.reason) != (_FAILED, NODE_LOST)
        # a fixed-instance variant, or an old spec, is replaced elsewhere
        leave = variant.instances > 0 or not member.fresh
        if route_failed or leave:
            out.append(Fail(allocation_id=alloc.allocation_id, node_id=alloc.node_id, route_failed=route_failed, leave=leave))
    return tuple(out)


def _progress(
    variant: deployments_pb2.VariantSpec, members: Sequence[rollout.Member], decision: rollout.VariantPlan
) -> rollout.Progress:
    fresh = [m for m in members if m.fresh and not m.lost and m.allocation_id not in decision.stop]
    return rollout.Progress(
        weight=variant.weight,
        started=sum(1 for m in fresh if m.routing_state == _STARTED),
        starting=sum(1 for m in fresh if m.routing_state == _STARTING) + len(decision.start_on),
        also_serving=sum(
            1 for m in members
            if not m.fresh and not m.lost and m.routing_state == _STARTED and m.allocation_id not in decision.stop
        ),
    )  # fmt: skip


def _is_open(variant: deployments_pb2.VariantSpec, decision: rollout.VariantPlan) -> bool:
    """The variant may take more nodes: every eligible node, or fewer targets than instances."""
    return variant.instances == 0 or len(decision.placement.targets) < variant.instances


def _member(alloc: records_pb2.AllocationRecord, *, fresh: bool, lost: bool) -> rollout.Member:
    """alloc as rollout sees it; a FAILED allocation holds nothing on its node."""
    used = scheduler.demand_of_allocation(alloc.spec)
    failed = alloc.routing_state == _FAILED
    return rollout.Member(
        allocation_id=alloc.allocation_id,
        node_id=alloc.node_id,
        routing_state=alloc.routing_state,
        fresh=fresh,
        lost=lost,
        used_cpus=0.0 if failed else used.cpus,
        used_memory=0 if failed else used.memory_bytes,
        used_gpus=0 if failed else used.gpus,
    )


def _stop(alloc: records_pb2.AllocationRecord, reason: str, lost_nodes: Collection[str]) -> Stop:
    return Stop(allocation_id=alloc.allocation_id, node_id=alloc.node_id, reason=reason, node_lost=alloc.node_id in lost_nodes)


def plan_stop_all(allocations: Sequence[records_pb2.AllocationRecord], lost_nodes: Collection[str]) -> tuple[Stop, ...]:
    """A stopped deployment: every wanted allocation stops; a stopping one on a lost node is removed (nobody can confirm it)."""
    return tuple(
        _stop(a, DEPLOYMENT_STOPPED, lost_nodes)
        for a in allocations
        if a.desired == RUNNING or a.node_id in lost_nodes
    )
