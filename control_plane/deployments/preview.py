"""Plan preview (`dry_run` on StartDeployment and UpdateDeployment).

This module owns the answer to "what would this start or update do?": it
runs the same planner the reconciler runs (control_plane.planning.rollout on top of
the scheduler) against the fleet as it is now, on copies of the records, and
renders the result with the same view code (control_plane.deployments.views), so the
preview's routing table is the one the real call would produce. Nothing is
written, sent or notified.

In the preview, an allocation that would be created has routing state
STARTING, the reason "would start here" and an allocation id "(new)"; one
that would stop has STOPPING and a reason that starts with "would stop";
every node that would not be chosen has its reason in `not_chosen`. For an
update, `rollout` says what the rolling update would wait for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from control_plane.deployments import views
from control_plane.planning import rollout, scheduler
from control_plane.fleet.liveness import Liveness
from control_plane.reconcile.reconciler import Reconciler
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, deployments_pb2

RUNNING = records_pb2.DESIRED_STATE_RUNNING
STOPPED = records_pb2.DESIRED_STATE_STOPPED
NEW_ID = "(new)"
DRY_RUN_REASON = "dry run: nothing was changed"


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
    node_views = reconciler.node_views()
    allocs = [_copy(a) for a in current]
    placements: dict[str, scheduler.Placement] = {}
    progress: list[rollout.Progress] = []
    waits: list[str] = []
    names = {v.name for v in rec.spec.variants}
    cordoned = {n.info.node_id for n in reconciler.store.list_nodes() if not n.schedulable}
    for variant in rec.spec.variants:
        model = reconciler.model_for(variant)
        if model is None:
            continue
        template = rollout.allocation_spec(deployment_id=rec.deployment_id, variant=variant, model=model)
        demand = scheduler.demand_for(variant, model_bytes=model.model_bytes)
        running = [a for a in allocs if a.variant == variant.name and a.desired == RUNNING]
        members = [
            rollout.Member(
                allocation_id=a.allocation_id,
                node_id=a.node_id,
                routing_state=a.routing_state,
                fresh=rollout.is_fresh(a.spec, template) and a.node_id not in cordoned,  # drained: replaced
                lost=reconciler.fleet.state(a.node_id) == Liveness.LOST,
            )
            for a in running
        ]
        plan = rollout.plan_variant(demand, list(node_views.values()), members, draining=0, name=variant.name)
        placements[variant.name] = plan.placement
        if plan.rollout:
            waits.append(plan.rollout)
        for node_id in plan.start_on:
            allocs.append(
                records_pb2.AllocationRecord(
                    allocation_id=NEW_ID,
                    deployment_id=rec.deployment_id,
                    variant=variant.name,
                    node_id=node_id,
                    desired=RUNNING,
                    routing_state=common_pb2.ROUTING_STATE_STARTING,
                    reason="would start here",
                    spec=template,
                )
            )
            view = node_views[node_id]
            node_views[node_id] = dataclasses.replace(
                view,
                used_cpus=view.used_cpus + demand.cpus,
                used_memory=view.used_memory + demand.memory_bytes,
                used_gpus=view.used_gpus + demand.gpus,
            )
        fresh_live = [m for m in members if m.fresh and not m.lost and m.allocation_id not in plan.stop]
        progress.append(
            rollout.Progress(
                weight=variant.weight,
                started=sum(1 for m in fresh_live if m.routing_state == common_pb2.ROUTING_STATE_STARTED),
                starting=sum(1 for m in fresh_live if m.routing_state == common_pb2.ROUTING_STATE_STARTING) + len(plan.start_on),
            )
        )
        for alloc, member in zip(running, members):
            if alloc.allocation_id in plan.stop:
                _would_stop(alloc, plan.stop[alloc.allocation_id])
            elif not member.fresh and not member.lost:
                _would_stop(alloc, "replaced once the new allocations have started (rolling update)")
    retiring = [a for a in allocs if a.variant not in names and a.desired == RUNNING]
    ready = rollout.ready_to_retire(progress)
    for alloc in retiring:
        _would_stop(alloc, "variant removed by an update" if ready else "variant removed; stops once the remaining variants have started")
    if retiring and not ready:
        gone = ", ".join(sorted({repr(a.variant) for a in retiring}))
        waits.append(f"removed variant(s) {gone} keep serving until the remaining variants have started")
    out = views.deployment_view(
        rec, reads=reconciler.reads, allocs=allocs, placements=placements, rollout_reason="; ".join(waits)
    )
    if rec.desired == RUNNING and out.status in (common_pb2.DEPLOYMENT_STATUS_UNSPECIFIED, common_pb2.DEPLOYMENT_STATUS_STOPPED):
        out.status = common_pb2.DEPLOYMENT_STATUS_DEPLOYING
    out.status_reason = DRY_RUN_REASON
    return out


def _copy(alloc: records_pb2.AllocationRecord) -> records_pb2.AllocationRecord:
    out = records_pb2.AllocationRecord()
    out.CopyFrom(alloc)
    return out


def _would_stop(alloc: records_pb2.AllocationRecord, reason: str) -> None:
    alloc.desired = STOPPED
    if alloc.routing_state != common_pb2.ROUTING_STATE_FAILED:
        alloc.routing_state = common_pb2.ROUTING_STATE_STOPPING
    alloc.reason = f"would stop: {reason}"
