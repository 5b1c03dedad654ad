"""Plan preview (`dry_run` on StartDeployment and UpdateDeployment).

This module owns the answer to "what would this start or update do?": it
builds the planner's inputs from the sources the reconciler's tick reads
(the node views' cache with its usage and drained nodes, liveness from the
fleet, the models in the store), runs the same planner
(control_plane.planning.planner) on copies of the records, and renders the
result with the same view code (control_plane.deployments.views), so the
preview's routing table is the one the next tick would write. Nothing is
written, sent or notified.

In the preview, an allocation that would be created has routing state
STARTING, the reason "would start here" and an allocation id "(new)"; one
that would stop has STOPPING (FAILED if it failed) and a reason that starts
with "would stop", and so has one that keeps serving only until the rolling
update replaces it; one on a lost node that the tick gives up is FAILED
"node lost". The nodes that would not be chosen are counted by reason, with
examples, in `not_chosen_summary`. For an update, `rollout` says what the rolling update would
wait for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from control_plane.deployments import views
from control_plane.fleet.liveness import Liveness
from control_plane.planning import planner, scheduler
from control_plane.reconcile.reconciler import Reconciler
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, deployments_pb2

RUNNING = records_pb2.DESIRED_STATE_RUNNING
STOPPED = records_pb2.DESIRED_STATE_STOPPED
NEW_ID = "(new)"
DRY_RUN_REASON = "dry run: nothing was changed"
WOULD_START = "would start here"
REPLACED_LATER = "replaced once the new allocations have started (rolling update)"
RETIRED_LATER = "variant removed; stops once the remaining variants have started"


@dataclass(frozen=True, kw_only=True)
class Planned:
    """A plan and the allocation records as the tick would leave them (with the preview's reasons).

    placements: by variant name.
    """

    plan: planner.Plan
    allocations: list[records_pb2.AllocationRecord]
    placements: dict[str, scheduler.Placement]


def preview(
    rec: records_pb2.DeploymentRecord,
    *,
    reconciler: Reconciler,
    current: Sequence[records_pb2.AllocationRecord] = (),
) -> deployments_pb2.Deployment:
    """The deployment rec (its spec the one to preview) as it would be planned.

    Args:
        rec: the record as it would be written (not stored).
        current: the deployment's allocations now (empty for a new deployment).
    """
    if rec.desired != RUNNING:  # a stopped deployment: the new spec applies when it is started again
        out = views.deployment_view(rec, reads=reconciler.reads, allocs=[], placements={}, rollout_reason="")
        out.status_reason = f"{DRY_RUN_REASON}; the deployment is stopped and the change applies when it starts again"
        return out
    planned = plan_preview(rec, reconciler=reconciler, current=current)
    out = views.deployment_view(
        rec,
        reads=reconciler.reads,
        allocs=planned.allocations,
        placements=planned.placements,
        rollout_reason=planned.plan.rollout,
    )
    if out.status in (common_pb2.DEPLOYMENT_STATUS_UNSPECIFIED, common_pb2.DEPLOYMENT_STATUS_STOPPED):
        out.status = common_pb2.DEPLOYMENT_STATUS_DEPLOYING
    out.status_reason = DRY_RUN_REASON
    return out


def plan_preview(
    rec: records_pb2.DeploymentRecord,
    *,
    reconciler: Reconciler,
    current: Sequence[records_pb2.AllocationRecord] = (),
) -> Planned:
    """The planner's plan for rec from the reconciler's sources now, applied to copies of current."""
    allocs = [_copy(a) for a in current]
    models = {
        (v.model_id, v.model_version): model
        for v in rec.spec.variants
        if (model := reconciler.model_for(v)) is not None
    }
    plan = planner.plan_deployment(
        record=rec,
        allocations=allocs,
        models=models,
        node_views=reconciler.node_views(),
        cordoned=reconciler.views.cordoned(),
        lost_nodes={a.node_id for a in allocs if reconciler.fleet.state(a.node_id) == Liveness.LOST},
    )
    _render(plan, allocs)
    new = [_new(rec, start) for start in plan.starts()]
    placements = {v.variant: v.placement for v in plan.variants if v.placement is not None}
    return Planned(plan=plan, allocations=allocs + new, placements=placements)


def _render(plan: planner.Plan, allocs: list[records_pb2.AllocationRecord]) -> None:
    """Mark the copies as the tick would leave them; reasons in the preview's words."""
    by_id = {a.allocation_id: a for a in allocs}
    for stop in plan.stops():
        _would_stop(by_id[stop.allocation_id], f"{stop.reason} (node lost)" if stop.node_lost else stop.reason)
    for fail in plan.fails():
        alloc = by_id[fail.allocation_id]
        if fail.route_failed:
            alloc.routing_state = common_pb2.ROUTING_STATE_FAILED
            alloc.reason = planner.NODE_LOST
        if fail.leave:
            alloc.desired = STOPPED
            alloc.reason = f"would stop: {alloc.reason}"
    for variant in plan.variants:
        for allocation_id in variant.replacing:
            _would_stop(by_id[allocation_id], REPLACED_LATER)
    for allocation_id in plan.retiring:
        _would_stop(by_id[allocation_id], RETIRED_LATER)


def _new(rec: records_pb2.DeploymentRecord, start: planner.Start) -> records_pb2.AllocationRecord:
    return records_pb2.AllocationRecord(
        allocation_id=NEW_ID,
        deployment_id=rec.deployment_id,
        variant=start.variant,
        node_id=start.node_id,
        desired=RUNNING,
        routing_state=common_pb2.ROUTING_STATE_STARTING,
        reason=WOULD_START,
        spec=start.spec,
    )


def _copy(alloc: records_pb2.AllocationRecord) -> records_pb2.AllocationRecord:
    out = records_pb2.AllocationRecord()
    out.CopyFrom(alloc)
    return out


def _would_stop(alloc: records_pb2.AllocationRecord, reason: str) -> None:
    alloc.desired = STOPPED
    if alloc.routing_state != common_pb2.ROUTING_STATE_FAILED:
        alloc.routing_state = common_pb2.ROUTING_STATE_STOPPING
    alloc.reason = f"would stop: {reason}"
