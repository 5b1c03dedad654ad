"""The level-triggered reconcile loop: desired deployments vs. allocations vs.
what agents report.

`reconcile()` is one tick. It is synchronous, never blocks and is safe to
call at any time and as often as wanted: it reads the desired state from
the store, plans each variant (control_plane.planning.planner, the dry run's
planner too), writes the intent (new allocation records, allocations marked to
stop) to the store *before* anything is sent, pushes every changed node its
complete desired set with a new generation, derives allocation/deployment
statuses and publishes changes to the hub. Agent reports (`observe`) only
record observations and trigger a tick; they never command anything
themselves.

This module owns the ticks and the planning: placement, rolling updates,
drains, lost nodes and auto stop. The Reconciler composes the rest, each
in its own module: `records` (control_plane.reconcile.records, the one
place routing states change), `statuses` (control_plane.reconcile.statuses),
`route_table` (control_plane.reconcile.routetable, the gateway's routes)
and `agents` (control_plane.reconcile.reports: `push`, `observe`,
`on_liveness_change`).

Allocation records (modelfleet.store.v1.AllocationRecord), one per variant
per node, move through:

    created (desired RUNNING, STARTING) -> STARTED | FAILED     (from reports)
    desired STOPPED (STOPPING) -> deleted once the agent, having applied a
        generation without it, no longer reports it, or the node is lost.

A LOST node's routes become FAILED "node lost" (STOPPED ones, from a
graceful shutdown, stay STOPPED); fixed-instance variants are placed
elsewhere and the lost copy leaves the desired set (fenced by generation).
A drained (cordoned) node's allocations count as stale, so the rolling
update rules replace them make-before-break.

An allocation never changes what it runs: an update that changes a
variant's worker settings creates new allocations (new ids) and stops the
old ones once the new ones are STARTED (make-before-break, see
control_plane.planning.rollout).

With authentication on (`worker_tokens`), every new allocation's spec gets a
random worker token: the agent hands it to the worker, and the gateway
presents it with each call it forwards there (docs/security.md, "Workers").

Auto stop compares the wall clock (`wall_clock`, injectable: tests move it)
with start_time + auto_stop.

Scale (docs/performance.md: 1,000 nodes x 1,000 deployments): a tick is
*full* (`reconcile()`: the periodic safety net, liveness changes, drain) or
*scoped* (`reconcile(ids)`: what one event touched: a start, stop or
update, a report, a registration), so nothing per event is O(nodes x
deployments). A scoped tick reconciles, re-routes and pushes only those
deployments and the nodes whose desired set changed; node views are cached
(control_plane.fleet.nodeviews); a variant is planned again only when its inputs
changed: its revision, its allocations, or, for *open* variants (every
eligible node, or fewer targets than instances), the views' epoch. The
periodic `tick()` covers due auto stops and open variants after the epoch
moved, with a full tick when a node's liveness changed and every
`full_every` seconds. Event-loop only; the store is synchronous and fast
(SQLite WAL behind the control plane's in-memory CachedStore).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from typing import NamedTuple

from google.protobuf import timestamp_pb2

from control_plane.fleet.liveness import Fleet, Liveness
from control_plane.fleet.nodeviews import NodeViews
from control_plane.planning import autoscale, planner, rollout, scheduler
from control_plane.reconcile.events import EventLog
from control_plane.reconcile.hub import ChangeHub
from control_plane.reconcile.reads import ReconcileReads
from control_plane.reconcile.records import (
    RS,
    RUNNING,
    STOPPED,
    AllocationRecords,
    set_route,
)
from control_plane.reconcile.reports import AgentReports
from control_plane.reconcile.routetable import RouteTable
from control_plane.reconcile.statuses import StatusWriter
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, deployments_pb2, models_pb2

log = logging.getLogger(__name__)

FULL_TICK_EVERY_S = 30.0  # the periodic safety net; events and tick() handle everything sooner


def now_ts() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


class Reconciler:
    """Ticks and planning (see the module docstring); owns the records, statuses, routes and agent reports components."""

    def __init__(
        self,
        *,
        store: Store,
        fleet: Fleet,
        hub: ChangeHub,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        worker_tokens: bool = False,
    ) -> None:
        self.store = store
        self.worker_tokens = worker_tokens  # give every new allocation a secret for its worker
        self._wall_clock = wall_clock
        self.fleet = fleet
        self.hub = hub
        self._clock = clock
        self.events = EventLog(store=store, hub=hub, now=self.now)
        # (deployment_id, variant) -> the last placement, for reasons shown to users
        self.placements: dict[tuple[str, str], scheduler.Placement] = {}
        # deployment_id -> what its rolling update waits for ("" or absent: none)
        self.rollouts: dict[str, str] = {}
        self.last_duration_s = 0.0
        # called after every tick with (seconds, "full" | "scoped"); control_plane.api.metrics sets it
        self.on_tick: Callable[[float, str], None] | None = None
        self.views = NodeViews(store=store, fleet=fleet)
        self._planned: dict[tuple[str, str], _Planned] = {}  # (deployment_id, variant) -> its last quiet plan
        self._open: set[str] = set()  # deployments with a variant that may take more nodes
        self._auto_stop_at: dict[str, float] = {}  # running deployments with auto stop -> wall time it is due
        self._fleet_version = -1  # Fleet.version at the last full tick
        self._open_epoch = -1  # the views' epoch when tick() last retried the open variants
        self._last_full = float("-inf")
        self.full_every = FULL_TICK_EVERY_S
        self.reads = ReconcileReads(
            store=store, fleet=fleet, nodes=self.views, placements=self.placements, rollouts=self.rollouts
        )
        self.records = AllocationRecords(store=store, fleet=fleet, views=self.views, events=self.events)
        self.statuses = StatusWriter(
            store=store, hub=hub, events=self.events, now=self.now, template=self.template,
            placements=self.placements, rollouts=self.rollouts,
        )
        self.route_table = RouteTable(store=store, fleet=fleet)
        self.agents = AgentReports(
            store=store, fleet=fleet, hub=hub, views=self.views, records=self.records,
            reconcile=self.reconcile, open_deployments=lambda: self._open,
        )

    def now(self) -> timestamp_pb2.Timestamp:
        """The control plane's wall clock as a Timestamp (start times, events)."""
        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(int(self._wall_clock() * 1e9))
        return ts

    def wall_time(self) -> float:
        return self._wall_clock()

    # ---- inputs ----------------------------------------------------------------
    def model_for(self, variant: deployments_pb2.VariantSpec) -> models_pb2.Model | None:
        return self.store.get_model(variant.model_id, variant.model_version)

    def template(self, deployment_id: str, variant: deployments_pb2.VariantSpec) -> agent_pb2.AllocationSpec | None:
        """The AllocationSpec the variant's current settings produce (no id), or None if its model is gone."""
        model = self.model_for(variant)
        if model is None:
            return None
        return rollout.allocation_spec(deployment_id=deployment_id, variant=variant, model=model)

    def node_views(self) -> dict[str, scheduler.NodeView]:
        """Capacity, usage and eligibility of every known node (a copy of the cache:
        registration, drain and uncordon refresh it; a node record written to the
        store any other way is seen at the next full tick).

        Usage counts every allocation that holds its node (all but FAILED
        ones and desired-STOPPED ones that already STOPPED), by its own spec:
        old allocations of a rolling update included. A SUSPECT node keeps what
        it has but is not schedulable (control_plane.fleet.nodeviews).
        """
        return dict(self.views.get())

    def forget(self, deployment_id: str) -> None:
        """The deployment was deleted: drop what was kept in memory for it."""
        self.rollouts.pop(deployment_id, None)
        self._open.discard(deployment_id)
        self._auto_stop_at.pop(deployment_id, None)
        for key in [k for k in self.placements if k[0] == deployment_id]:
            del self.placements[key]
        for key in [k for k in self._planned if k[0] == deployment_id]:
            del self._planned[key]

    # ---- the tick ----------------------------------------------------------------
    def tick(self) -> None:
        """The periodic loop's step (see the module docstring)."""
        if self.fleet.version != self._fleet_version or self._clock() - self._last_full >= self.full_every:
            self.reconcile()
            return
        wall = self._wall_clock()
        due = {d for d, at in self._auto_stop_at.items() if wall >= at}
        retry = self._open if self.views.epoch != self._open_epoch else set()
        self._open_epoch = self.views.epoch
        if due or retry:
            self.reconcile(due | retry)

    def reconcile(self, deployment_ids: Iterable[str] | None = None) -> None:
        """One tick: every deployment (None), or only `deployment_ids` (scoped)."""
        started = time.perf_counter()
        full = deployment_ids is None
        if full:
            self._fleet_version, self._last_full = self.fleet.version, self._clock()
            views = self.views.rebuild()
            records = self.store.list_deployments()
            wanted = {r.deployment_id for r in records}
        else:
            views = self.views.get()
            wanted = set(deployment_ids or ())
            records = [r for r in map(self.store.get_deployment, sorted(wanted)) if r is not None]
        # drained nodes: their allocations count as stale (replaced make-before-break)
        cordoned = self.views.cordoned()
        dirty_nodes: set[str] = set()
        notify: list[str] = []
        # One commit for the tick, and only then is anything pushed (intent is durable before
        # agents act on it). A deployment whose reconcile raises keeps the writes it made
        # before the error (the store joins nested blocks); the next tick converges it.
        with self.store.transaction():
            for rec in records:
                mine: set[str] = set()
                try:
                    self._reconcile_deployment(rec, views, mine, cordoned=cordoned)
                except Exception:  # one bad deployment must not stop the others
                    log.exception("reconcile of deployment %s failed", rec.deployment_id)
                if mine:
                    dirty_nodes |= mine
                    notify.append(rec.deployment_id)
        for deployment_id in notify:
            self.hub.notify(deployment_id)
        if full:
            dirty_nodes |= {n for n in views if self.fleet.session(n) is not None}
        for node_id in sorted(dirty_nodes):
            self.agents.push(node_id)
        self.route_table.rebuild(None if full else wanted)
        self.last_duration_s = time.perf_counter() - started
        if self.on_tick is not None:
            self.on_tick(self.last_duration_s, "full" if full else "scoped")

    def _auto_stop(self, rec: records_pb2.DeploymentRecord) -> None:
        if rec.desired != RUNNING or not rec.spec.HasField("auto_stop") or not rec.HasField("start_time"):
            return
        if self._wall_clock() < rec.start_time.seconds + rec.spec.auto_stop.seconds:
            return
        hours = rec.spec.auto_stop.seconds / 3600
        rec.desired = STOPPED
        rec.stop_reason = "auto stop"
        rec.revision += 1
        with self.store.transaction():
            self.store.put_deployment(rec)
            self.events.spec(rec.deployment_id, revision=rec.revision, reason=f"auto stop: {hours:g} h after the start")
        log.info("deployment %s: auto stop after %g h", rec.deployment_id, hours)

    def _reconcile_deployment(
        self,
        rec: records_pb2.DeploymentRecord,
        views: dict[str, scheduler.NodeView],
        dirty_nodes: set[str],
        *,
        cordoned: frozenset[str] = frozenset(),
    ) -> None:
        self._auto_stop_at.pop(rec.deployment_id, None)
        self._auto_stop(rec)
        if rec.desired == RUNNING and rec.spec.HasField("auto_stop") and rec.HasField("start_time"):
            self._auto_stop_at[rec.deployment_id] = rec.start_time.seconds + rec.spec.auto_stop.seconds
        self._open.discard(rec.deployment_id)  # _place_variant adds it back while a variant is open
        allocs = self.store.list_allocations(deployment_id=rec.deployment_id)
        names = {v.name for v in rec.spec.variants}
        reasons: list[str] = []
        lost = {a.node_id for a in allocs if self.fleet.state(a.node_id) == Liveness.LOST}
        by_id = {a.allocation_id: a for a in allocs}
        with self.store.transaction():
            if rec.desired == STOPPED:
                stops = planner.plan_stop_all(allocs, lost)
            else:
                progress: list[rollout.Progress] = []
                for variant in rec.spec.variants:
                    plan, prog = self._place_variant(rec, variant, allocs, views, dirty_nodes, cordoned=cordoned)
                    progress.append(prog)
                    if plan is not None and plan.rollout:
                        reasons.append(plan.rollout)
                retiring = [a for a in allocs if a.desired == RUNNING and a.variant not in names]
                stops, waits = planner.plan_retiring(retiring, progress=progress, lost_nodes=lost)
                if waits:
                    reasons.append(waits)
            for stop in stops:
                self._stop_allocation(by_id[stop.allocation_id], dirty_nodes, reason=stop.reason)
        self.rollouts[rec.deployment_id] = "; ".join(reasons)
        self.statuses.derive(rec.deployment_id)

    def _place_variant(
        self,
        rec: records_pb2.DeploymentRecord,
        variant: deployments_pb2.VariantSpec,
        allocs: list[records_pb2.AllocationRecord],
        views: dict[str, scheduler.NodeView],
        dirty_nodes: set[str],
        *,
        cordoned: frozenset[str] = frozenset(),
    ) -> tuple[rollout.VariantPlan | None, rollout.Progress]:
        model = self.model_for(variant)
        variant = autoscale.effective(rec, variant)  # an autoscaled variant: instances = its wanted count
        mine = [a for a in allocs if a.variant == variant.name]
        key = (rec.deployment_id, variant.name)
        # everything the plan reads about each allocation: a drain (cordon) or a liveness change plans again
        inputs = (
            rec.revision,
            variant.instances,
            tuple(
                (a.allocation_id, a.node_id, a.desired, a.routing_state, self.fleet.state(a.node_id), a.node_id in cordoned)
                for a in mine
            ),
        )
        done = self._planned.get(key) if model is not None else None
        if done is not None and done.inputs == inputs and (not done.waiting or done.epoch == self.views.epoch):
            if done.waiting:
                self._open.add(rec.deployment_id)
            return done.plan, done.progress  # nothing it depends on changed (see the module docstring)
        actions = planner.plan_variant(
            deployment_id=rec.deployment_id,
            variant=variant,
            model=model,
            allocations=mine,
            node_views=views,
            cordoned=cordoned,
            lost_nodes={a.node_id for a in mine if self.fleet.state(a.node_id) == Liveness.LOST},
            max_unavailable=rec.spec.max_unavailable,
        )
        if model is None or actions.decision is None:
            log.error("deployment %s: %s", rec.deployment_id, actions.error)
            return None, actions.progress
        placement = actions.decision.placement.compact()  # kept for views: reasons counted, not one per node
        self.placements[key] = placement
        self._apply_variant(rec, variant, model, actions, mine=mine, views=views, dirty_nodes=dirty_nodes)
        if actions.waiting:
            self._open.add(rec.deployment_id)
        if actions.quiet:
            decision = dataclasses.replace(actions.decision, placement=placement)
            self._planned[key] = _Planned(inputs, decision, actions.progress, self.views.epoch, actions.waiting)
        else:
            self._planned.pop(key, None)  # it acted: plan again next time
        return actions.decision, actions.progress

    def _apply_variant(
        self,
        rec: records_pb2.DeploymentRecord,
        variant: deployments_pb2.VariantSpec,
        model: models_pb2.Model,
        actions: planner.VariantActions,
        *,
        mine: list[records_pb2.AllocationRecord],
        views: dict[str, scheduler.NodeView],
        dirty_nodes: set[str],
    ) -> None:
        """Write what the planner decided: new allocations (their usage counted in
        views for the next plans of this tick), then stops and lost-node failures
        in the order of the records."""
        for start in actions.starts:
            self.records.save(self._new_allocation(rec, variant, model, start.node_id), before=RS.ROUTING_STATE_UNSPECIFIED)
            dirty_nodes.add(start.node_id)
            views[start.node_id] = planner.with_usage(views[start.node_id], start.demand)
        stops = {s.allocation_id: s for s in actions.stops}
        fails = {f.allocation_id: f for f in actions.fails}
        for alloc in mine:
            stop = stops.get(alloc.allocation_id)
            fail = fails.get(alloc.allocation_id)
            if stop is not None:
                self._stop_allocation(alloc, dirty_nodes, reason=stop.reason)
            elif fail is not None:
                before = alloc.routing_state
                if fail.route_failed:
                    set_route(alloc, RS.ROUTING_STATE_FAILED, planner.NODE_LOST)
                if fail.leave:
                    alloc.desired = STOPPED  # replaced elsewhere; the lost node stops it when it returns
                self.records.save(alloc, before=before)

    def _new_allocation(
        self,
        rec: records_pb2.DeploymentRecord,
        variant: deployments_pb2.VariantSpec,
        model: models_pb2.Model,
        node_id: str,
    ) -> records_pb2.AllocationRecord:
        allocation_id = f"{rec.deployment_id}-{uuid.uuid4().hex[:10]}"
        spec = rollout.allocation_spec(deployment_id=rec.deployment_id, variant=variant, model=model, allocation_id=allocation_id)
        if self.worker_tokens:
            spec.worker_token = secrets.token_urlsafe(32)
        return records_pb2.AllocationRecord(
            allocation_id=allocation_id,
            deployment_id=rec.deployment_id,
            variant=variant.name,
            node_id=node_id,
            desired=RUNNING,
            routing_state=RS.ROUTING_STATE_STARTING,
            reason="placed on the node",
            created_at=now_ts(),
            spec=spec,
        )

    def _stop_allocation(self, alloc: records_pb2.AllocationRecord, dirty_nodes: set[str], *, reason: str) -> None:
        if self.fleet.state(alloc.node_id) == Liveness.LOST:
            self.records.remove(alloc, reason=f"{reason} (node lost)")
            return
        before = alloc.routing_state
        alloc.desired = STOPPED
        if alloc.routing_state != RS.ROUTING_STATE_FAILED:
            set_route(alloc, RS.ROUTING_STATE_STOPPING, reason)
        self.records.save(alloc, before=before)
        dirty_nodes.add(alloc.node_id)


class _Planned(NamedTuple):
    """A plan that changed nothing, and what it was computed from."""

    inputs: object  # the revision, the wanted count and (id, node, desired, routing state, liveness, cordoned) of each allocation
    plan: rollout.VariantPlan
    progress: rollout.Progress
    epoch: int  # the node views' epoch (waiting variants are planned again when it moves)
    waiting: bool  # open, or a rolling update or drain waits for capacity

