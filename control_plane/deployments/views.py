"""Builds the API's read models (Deployment, Allocation, Node, stats) from
store records plus what the fleet observes right now. Pure functions of
their inputs; no writes. The dry-run preview (control_plane.deployments.preview) builds
its plan with the same functions from records it only imagined.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from control_plane.fleet.liveness import Fleet, Liveness
from control_plane.planning import autoscale, lifecycle, planner, reasons, rollout, scheduler
from control_plane.reconcile.reads import ReconcileReads
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, deployments_pb2, nodes_pb2

RUNNING = records_pb2.DESIRED_STATE_RUNNING
STOPPED = records_pb2.DESIRED_STATE_STOPPED

FULL = common_pb2.VIEW_FULL
BASIC = common_pb2.VIEW_BASIC


@dataclass(frozen=True)
class Shape:
    """How much of a deployment a read returns (see common.proto's View)."""

    view: int = FULL  # BASIC leaves out routing tables and placement reasons
    per_node_reasons: bool = False  # FULL only: also one reason per node not chosen


FULL_SHAPE = Shape()


_LIVENESS = {
    Liveness.READY: nodes_pb2.NODE_STATE_READY,
    Liveness.SUSPECT: nodes_pb2.NODE_STATE_SUSPECT,
    Liveness.LOST: nodes_pb2.NODE_STATE_LOST,
}


def allocation_view(
    rec: records_pb2.DeploymentRecord,
    variant: deployments_pb2.VariantSpec,
    allocs: Sequence[records_pb2.AllocationRecord],
    *,
    reads: ReconcileReads,
    placement: scheduler.Placement | None = None,
    shape: Shape = FULL_SHAPE,
) -> deployments_pb2.Allocation:
    """One variant's allocation. placement: default, the reconciler's last one."""
    model = reads.model_for(variant)
    if placement is None:
        placement = reads.placements.get((rec.deployment_id, variant.name))
    out = deployments_pb2.Allocation(
        task_parameters=deployments_pb2.TaskParameters(
            model_id=variant.model_id,
            model_version=variant.model_version,
            model_bytes=model.model_bytes if model else 0,
            sha256=model.sha256 if model else "",
            inference_threads=variant.inference_threads,
            model_threads=variant.model_threads,
            queue_capacity=variant.queue_capacity,
        ),
        variant=variant.name,
        weight=variant.weight,
        target_nodes=len(placement.targets) if placement else 0,
    )
    if rec.HasField("start_time"):
        out.start_time.CopyFrom(rec.start_time)
    template = rollout.allocation_spec(deployment_id=rec.deployment_id, variant=variant, model=model) if model else None

    def fresh(a: records_pb2.AllocationRecord) -> bool:
        return template is None or rollout.is_fresh(a.spec, template)

    # per node, the allocation that matters most wins: a wanted one with the
    # current spec, then a wanted old one (rolling update), then a stopping one
    mine = sorted(
        (a for a in allocs if a.variant == variant.name),
        key=lambda a: (a.desired == RUNNING, a.desired == RUNNING and fresh(a)),
    )
    _fill_routing_table(out, mine, reads=reads)
    if placement and rec.desired == RUNNING and shape.view == FULL:
        _fill_reasons(out, rec, variant, allocs, placement=placement, reads=reads, shape=shape)
    _finish(out, shape)
    scale = autoscale.status(rec, variant, allocs)
    if scale is not None:
        out.autoscaling.CopyFrom(scale)
    if rec.desired == STOPPED:
        out.target_nodes = 0  # a stopped deployment targets no node; its allocations are what remains
        routes = [a.routing_state for a in mine]
    else:
        routes = [a.routing_state for a in mine if a.desired == RUNNING and fresh(a)]
    out.allocation_state = lifecycle.allocation_state(routes, target_count=out.target_nodes, stopping=rec.desired == STOPPED)
    return out


def _fill_reasons(
    out: deployments_pb2.Allocation,
    rec: records_pb2.DeploymentRecord,
    variant: deployments_pb2.VariantSpec,
    allocs: Sequence[records_pb2.AllocationRecord],
    *,
    placement: scheduler.Placement,
    reads: ReconcileReads,
    shape: Shape,
) -> None:
    """Placement reasons counted by reason; one per node as well when the shape asks for them."""
    per_node: Mapping[str, str] | None = None
    if placement.not_chosen:  # a placement planned for a dry run: every reason is at hand
        per_node = {n: why for n, why in placement.not_chosen.items() if n not in out.routing_table}
        groups: Sequence[reasons.ReasonGroup] = reasons.summarise(per_node)
    else:  # the reconciler's, kept with its reasons counted only
        groups = placement.summary
    for group in groups:
        out.not_chosen_summary.add(reason=group.reason, count=group.count, example_nodes=group.examples)
    if not shape.per_node_reasons:
        return
    model = reads.model_for(variant)
    if per_node is None and model is not None:
        per_node = planner.not_chosen_now(
            deployment_id=rec.deployment_id, variant=autoscale.effective(rec, variant), model=model, allocations=allocs,
            node_views=reads.node_views(), cordoned=reads.cordoned(),
        )  # fmt: skip
    out.not_chosen.update({n: why for n, why in (per_node or {}).items() if n not in out.routing_table})


def _finish(out: deployments_pb2.Allocation, shape: Shape) -> None:
    """Count the routes by state; the BASIC view then drops the table itself."""
    for entry in out.routing_table.values():
        name = common_pb2.RoutingState.Name(entry.routing_state).removeprefix("ROUTING_STATE_").lower()
        out.route_counts[name] += 1
    if shape.view != FULL:
        out.ClearField("routing_table")


def _fill_routing_table(
    out: deployments_pb2.Allocation, allocs: Sequence[records_pb2.AllocationRecord], *, reads: ReconcileReads
) -> None:
    cordoned = reads.cordoned() if allocs else frozenset()  # cached: not a scan of every node per view
    for alloc in allocs:  # later ones win on the same node
        entry = out.routing_table[alloc.node_id]
        entry.Clear()
        entry.routing_state = alloc.routing_state
        entry.reason = alloc.reason
        if alloc.routing_state == common_pb2.ROUTING_STATE_STARTED and reads.fleet.state(alloc.node_id) != Liveness.READY:
            entry.reason = "node is not responding; not routed to"
        elif alloc.routing_state == common_pb2.ROUTING_STATE_STARTED and alloc.desired == RUNNING and alloc.node_id in cordoned:
            entry.reason = "node drained; serving until a replacement has started"
        entry.allocation_id = alloc.allocation_id
        entry.worker_address = alloc.worker_address
        if alloc.HasField("start_time"):
            entry.start_time.CopyFrom(alloc.start_time)


def retiring_view(
    variant: str, allocs: Sequence[records_pb2.AllocationRecord], *, reads: ReconcileReads, shape: Shape = FULL_SHAPE
) -> deployments_pb2.Allocation:
    """The allocation of a variant an update removed, while its workers remain."""
    mine = sorted(allocs, key=lambda a: a.desired == RUNNING)
    spec = mine[-1].spec
    out = deployments_pb2.Allocation(
        task_parameters=deployments_pb2.TaskParameters(
            model_id=spec.model_id,
            model_version=spec.model_version,
            model_bytes=spec.model_bytes,
            sha256=spec.model_sha256,
            inference_threads=spec.inference_threads,
            model_threads=spec.model_threads,
            queue_capacity=spec.queue_capacity,
        ),
        variant=variant,
        weight=0,
    )
    _fill_routing_table(out, mine, reads=reads)
    _finish(out, shape)
    if all(a.desired == STOPPED for a in mine):
        routes = [a.routing_state for a in mine]
        out.allocation_state = lifecycle.allocation_state(routes, target_count=0, stopping=True)
    else:
        routes = [a.routing_state for a in mine if a.desired == RUNNING]
        out.allocation_state = lifecycle.allocation_state(routes, target_count=len(routes), stopping=False)
    return out


def deployment_view(
    rec: records_pb2.DeploymentRecord,
    *,
    reads: ReconcileReads,
    allocs: Sequence[records_pb2.AllocationRecord] | None = None,
    placements: Mapping[str, scheduler.Placement] | None = None,
    rollout_reason: str | None = None,
    shape: Shape = FULL_SHAPE,
) -> deployments_pb2.Deployment:
    """The Deployment a client sees.

    allocs, placements (by variant name) and rollout_reason default to what
    the store and the Reconciler hold now; the dry-run preview passes the
    ones it planned instead.
    """
    if allocs is None:
        allocs = reads.store.list_allocations(deployment_id=rec.deployment_id)
    out = deployments_pb2.Deployment(
        deployment_id=rec.deployment_id,
        status=rec.status,
        status_reason=rec.status_reason,
        description=rec.spec.description,
        variants=rec.spec.variants,
        owner=rec.owner,
        traffic_limit_qps=rec.spec.traffic_limit_qps,
        revision=rec.revision,
    )
    for name in ("created_at", "start_time", "stopped_at"):
        if rec.HasField(name):
            getattr(out, name).CopyFrom(getattr(rec, name))
    if rec.spec.HasField("auto_stop"):
        out.auto_stop.CopyFrom(rec.spec.auto_stop)
        if rec.desired == RUNNING and rec.HasField("start_time"):
            out.auto_stop_at.FromSeconds(rec.start_time.seconds + rec.spec.auto_stop.seconds)
    for variant in rec.spec.variants:
        placement = placements.get(variant.name) if placements is not None else None
        out.allocations.append(allocation_view(rec, variant, allocs, reads=reads, placement=placement, shape=shape))
    names = {v.name for v in rec.spec.variants}
    retiring: dict[str, list[records_pb2.AllocationRecord]] = {}
    for alloc in allocs:
        if alloc.variant not in names:
            retiring.setdefault(alloc.variant, []).append(alloc)
    for variant_name, mine in sorted(retiring.items()):
        out.retiring.append(retiring_view(variant_name, mine, reads=reads, shape=shape))
    if rec.desired == RUNNING:
        out.rollout = reads.rollouts.get(rec.deployment_id, "") if rollout_reason is None else rollout_reason
    return out


def node_state(node_id: str, *, reads: ReconcileReads) -> int:
    """The node's NodeState as the API shows it."""
    return _LIVENESS[reads.fleet.state(node_id)]


def node_view(node: records_pb2.NodeRecord, *, reads: ReconcileReads) -> nodes_pb2.Node:
    fleet: Fleet = reads.fleet
    node_id = node.info.node_id
    live = fleet.live(node_id)
    view = reads.node_views().get(node_id)
    out = nodes_pb2.Node(
        node_id=node_id,
        hostname=node.info.hostname,
        state=_LIVENESS[fleet.state(node_id)],
        capacity=node.info.capacity,
        labels=dict(node.info.labels),
        schedulable=node.schedulable,
        agent_version=node.info.agent_version,
        allocation_ids=[a.allocation_id for a in reads.store.list_allocations(node_id=node_id)],
        generation=node.generation,
        applied_generation=live.applied_generation if live else 0,
    )
    if view is not None:
        out.allocated.cpus = view.used_cpus
        out.allocated.memory_bytes = view.used_memory
        out.allocated.gpus = view.used_gpus
    if node.HasField("registered_at"):
        out.registered_at.CopyFrom(node.registered_at)
    if live and live.last_heartbeat_wall:
        out.last_heartbeat.FromNanoseconds(int(live.last_heartbeat_wall * 1e9))
    return out


def _add_gateway_counts(total: common_pb2.InferenceStats, one: common_pb2.InferenceStats) -> None:
    for name in ("inference_count", "error_count", "rejected_execution_count", "timeout_count", "cancelled_count"):
        setattr(total, name, getattr(total, name) + getattr(one, name))
    if one.HasField("last_access") and (
        not total.HasField("last_access") or one.last_access.ToNanoseconds() > total.last_access.ToNanoseconds()
    ):
        total.last_access.CopyFrom(one.last_access)


def stats_view(
    rec: records_pb2.DeploymentRecord,
    *,
    reads: ReconcileReads,
    gateway_stats: Callable[[str], Sequence[deployments_pb2.GatewayCounters]] | None = None,
) -> deployments_pb2.GetDeploymentStatsResponse:
    out = deployments_pb2.GetDeploymentStatsResponse(deployment_id=rec.deployment_id, status=rec.status)
    for seen in gateway_stats(rec.deployment_id) if gateway_stats is not None else ():
        out.gateways.add().CopyFrom(seen)
        _add_gateway_counts(out.gateway, seen.stats)
    total = out.total
    weighted_ms = 0.0
    for alloc in reads.store.list_allocations(deployment_id=rec.deployment_id):
        item = out.nodes.add(
            node_id=alloc.node_id,
            variant=alloc.variant,
            allocation_id=alloc.allocation_id,
            routing_state=alloc.routing_state,
            reason=alloc.reason,
        )
        stats = reads.fleet.stats(alloc.node_id, alloc.allocation_id)
        if stats is not None:
            item.stats.CopyFrom(stats)
        if alloc.HasField("start_time") and not item.stats.HasField("start_time"):
            item.stats.start_time.CopyFrom(alloc.start_time)
        s = item.stats
        for name in (
            "inference_count",
            "error_count",
            "rejected_execution_count",
            "timeout_count",
            "cancelled_count",
            "number_of_pending_requests",
            "peak_throughput_per_minute",
            "throughput_last_minute",
        ):
            setattr(total, name, getattr(total, name) + getattr(s, name))
        weighted_ms += s.average_inference_time_ms * s.inference_count
        if s.HasField("last_access") and (not total.HasField("last_access") or s.last_access.ToNanoseconds() > total.last_access.ToNanoseconds()):
            total.last_access.CopyFrom(s.last_access)
    if total.inference_count:
        total.average_inference_time_ms = weighted_ms / total.inference_count
    if rec.HasField("start_time"):
        total.start_time.CopyFrom(rec.start_time)
    allocs = reads.store.list_allocations(deployment_id=rec.deployment_id)
    for variant in rec.spec.variants:
        scale = autoscale.status(rec, variant, allocs)
        if scale is not None:
            out.variants.add(variant=variant.name, autoscaling=scale)
    return out
