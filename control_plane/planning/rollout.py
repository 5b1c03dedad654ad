"""Rolling updates (gated launch), planned by pure functions.

This module owns the make-before-break rules. The reconciler executes what
`plan_variant` and `ready_to_retire` decide on every tick; the dry-run
preview renders the same decisions without executing them, so a preview
shows exactly what a tick would do. No I/O, no clock.

An allocation is immutable: the agent never changes a running worker in
place. An allocation is *fresh* when its AllocationSpec (allocation id
aside) equals the one the variant's current settings produce
(`allocation_spec`), and *stale* otherwise (threads, queue, env, resources
or the model changed by an update). Rules, per variant:

1. Fresh allocations are placed by the scheduler as usual; the capacity that
   stale ones hold is counted, so a new allocation starts beside an old one
   only where both fit (surge).
2. A stale allocation stops ("drains") once a fresh allocation on its node is
   STARTED: new workers reach STARTED before old ones leave.
3. Once every target has a STARTED fresh allocation, stale allocations on
   other nodes stop: all at once when they are surplus (instances reached, or
   their node could not take the new spec even if they left), otherwise one
   at a time, each after the previous one has drained (it is in the way of a
   new allocation on its own node).
4. When no node has room for a new allocation beside the old ones, nothing is
   starting and nothing is draining, the update waits and its rollout names
   the shortfall: capacity is never taken away silently. Only with
   `max_unavailable` > 0 are up to that many stale allocations replaced in
   place (stopped first): the only break-before-make step.
5. A fresh allocation that FAILED keeps every stale one serving: a broken
   new spec never takes the old workers down.

Variants removed by an update keep serving (their allocations are
*retiring*) until `ready_to_retire`: every remaining variant with a weight
has a started route and none still starting. The gateway routes by weight
among variants that have started routes, so traffic only ever moves to
workers that are STARTED.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from control_plane.planning import reasons, scheduler
from modelfleet.v1 import agent_pb2, common_pb2, deployments_pb2, models_pb2

_STARTED = common_pb2.ROUTING_STATE_STARTED
_STARTING = common_pb2.ROUTING_STATE_STARTING
NO_LONGER_A_TARGET = "no longer a target"


def allocation_spec(
    *,
    deployment_id: str,
    variant: deployments_pb2.VariantSpec,
    model: models_pb2.Model,
    allocation_id: str = "",
) -> agent_pb2.AllocationSpec:
    """What the agent is told to run for one allocation of variant."""
    return agent_pb2.AllocationSpec(
        allocation_id=allocation_id,
        deployment_id=deployment_id,
        variant=variant.name,
        model_id=model.model_id,
        model_version=model.version,
        model_sha256=model.sha256,
        model_bytes=model.model_bytes,
        format=model.format,
        inference_threads=variant.inference_threads,
        model_threads=variant.model_threads,
        queue_capacity=variant.queue_capacity,
        env=dict(variant.env),
        resources=variant.resources,
        max_batch_size=variant.max_batch_size,
        max_queue_delay_us=variant.max_queue_delay_us,
        inputs=model.inputs,
        outputs=model.outputs,
    )


def is_fresh(spec: agent_pb2.AllocationSpec, template: agent_pb2.AllocationSpec) -> bool:
    """True if spec runs what template describes (allocation ids and worker tokens aside)."""
    other = agent_pb2.AllocationSpec()
    other.CopyFrom(spec)
    other.allocation_id = template.allocation_id
    other.worker_token = template.worker_token
    return other == template


@dataclass(frozen=True, kw_only=True)
class Member:
    """One allocation of a variant (desired RUNNING) as the planner sees it.

    used_*: what it holds on its node (its own spec's demand).
    """

    allocation_id: str
    node_id: str
    routing_state: int
    fresh: bool
    lost: bool = False
    used_cpus: float = 0.0
    used_memory: int = 0
    used_gpus: int = 0


@dataclass(frozen=True, kw_only=True)
class VariantPlan:
    """What one tick does for one variant.

    placement: where fresh allocations belong (targets, and why not elsewhere).
    start_on: nodes that get a new allocation now.
    stop: allocation_id -> reason, for allocations to stop now (live nodes).
    rollout: while stale allocations remain, what the update waits for; else "".
    """

    placement: scheduler.Placement
    start_on: tuple[str, ...]
    stop: Mapping[str, str]
    rollout: str = ""


def plan_variant(
    demand: scheduler.Demand,
    nodes: Sequence[scheduler.NodeView],
    members: Sequence[Member],
    *,
    draining: int,
    name: str,
    draining_stale: int = 0,
    max_unavailable: int = 0,
) -> VariantPlan:
    """Plan one variant (rules in the module docstring).

    Args:
        demand: what one fresh allocation needs, and how many nodes.
        nodes: every node; used_* already counts every allocation, stale ones included.
        members: the variant's allocations that are wanted (desired RUNNING).
        draining: the variant's allocations that are stopping and not gone yet.
        name: the variant's name, for reasons.
        draining_stale: how many of those are stale (the update is not done
            until they are gone and their room is used).
        max_unavailable: how many stale allocations may be stopped before
            their replacements started, when there is no room beside them.
    """
    alive = [m for m in members if not m.lost]
    fresh = [m for m in alive if m.fresh]
    stale = [m for m in alive if not m.fresh]
    fresh_nodes = {m.node_id for m in fresh}
    placement = scheduler.place(demand, nodes, current=fresh_nodes)
    targets = set(placement.targets)
    start_on = tuple(n for n in placement.targets if n not in fresh_nodes)
    stop: dict[str, str] = {m.allocation_id: NO_LONGER_A_TARGET for m in fresh if m.node_id not in targets}
    if not stale:
        rollout = f"variant {name!r}: {draining_stale} old allocation(s) draining" if draining_stale else ""
        return VariantPlan(placement=placement, start_on=start_on, stop=stop, rollout=rollout)

    started_on = {m.node_id for m in fresh if m.node_id in targets and m.routing_state == _STARTED}
    all_started = bool(targets) and targets <= started_on
    starting = bool(start_on) or any(m.routing_state == _STARTING for m in fresh if m.node_id in targets)
    by_id = {n.node_id: n for n in nodes}
    rest: list[Member] = []
    for m in stale:
        if m.node_id in started_on:
            stop[m.allocation_id] = "replaced by a new allocation on this node (rolling update)"
        else:
            rest.append(m)
    blocking = [m for m in rest if _in_the_way(demand, by_id.get(m.node_id), m)]
    surplus = [m for m in rest if m not in blocking]
    if all_started:
        enough = demand.instances > 0 and len(targets) >= demand.instances
        for m in rest if enough else surplus:
            stop[m.allocation_id] = "replaced by new allocations on other nodes (rolling update)"
    quiet = draining == 0 and not starting
    stuck = bool(blocking) and quiet and (all_started or not targets) and not any(m.allocation_id in stop for m in rest)
    if stuck:
        stop.update(_in_place(blocking, max_unavailable))
    remaining = sum(1 for m in stale if m.allocation_id not in stop)
    rollout = _waits_for(placement, name=name, started=len(started_on), remaining=remaining)
    if stuck and max_unavailable == 0:
        rollout = _no_room(demand, name=name, blocked=len(blocking), remaining=remaining)
    return VariantPlan(placement=placement, start_on=start_on, stop=stop, rollout=rollout)


def _in_place(blocking: Sequence[Member], max_unavailable: int) -> dict[str, str]:
    """The stale allocations to stop before their replacements start: up to
    max_unavailable, ones that do not serve first, then by node id."""
    chosen = sorted(blocking, key=lambda m: (m.routing_state == _STARTED, m.node_id))[:max_unavailable]
    return {m.allocation_id: "replaced in place: no node has room to start a new allocation beside it (rolling update)" for m in chosen}


def _no_room(demand: scheduler.Demand, *, name: str, blocked: int, remaining: int) -> str:
    """Why an update with no room to surge waits, and how to let it proceed."""
    return (
        f"variant {name!r}: waiting for room: no node can start a new allocation ({scheduler.describe_demand(demand)}) "
        f"beside the {blocked} old one(s) it would replace; {remaining} old ones still serving. Free capacity, add a "
        "node, or update with max_unavailable >= 1 (--max-unavailable 1) to replace them in place"
    )


def _waits_for(placement: scheduler.Placement, *, name: str, started: int, remaining: int) -> str:
    """What a variant's rolling update waits for, while it has stale allocations."""
    if placement.targets:
        return f"variant {name!r}: {started} of {len(placement.targets)} new allocations started, {remaining} old ones still serving"
    why = placement.shortfall or reasons.describe_nodes(placement.not_chosen)
    return f"variant {name!r}: waiting for room to start new allocations ({why}); {remaining} old ones still serving"


def _in_the_way(demand: scheduler.Demand, node: scheduler.NodeView | None, m: Member) -> bool:
    """True if a fresh allocation would be placed on m's node once m has left."""
    if node is None or not node.ready:
        return False
    freed = dataclasses.replace(
        node,
        used_cpus=node.used_cpus - m.used_cpus,
        used_memory=node.used_memory - m.used_memory,
        used_gpus=node.used_gpus - m.used_gpus,
    )
    return scheduler.why_not_eligible(demand, freed) is None


@dataclass(frozen=True, kw_only=True)
class Progress:
    """One remaining variant, for ready_to_retire: its weight, its fresh
    routes started and starting, and its stale routes still serving."""

    weight: int
    started: int
    starting: int
    also_serving: int = 0


def ready_to_retire(variants: Sequence[Progress]) -> bool:
    """True once removed variants may stop: every weighted remaining variant
    serves (>= 1 started route) and none of them is still starting."""
    weighted = [v for v in variants if v.weight > 0]
    return bool(weighted) and all(v.started + v.also_serving >= 1 and v.starting == 0 for v in weighted)
