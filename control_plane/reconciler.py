"""The level-triggered reconcile loop: desired deployments vs. allocations vs.
what agents report.

`reconcile()` is one tick. It is synchronous, never blocks and is safe to
call at any time and as often as wanted: it reads the desired state from
the store, places variants with the scheduler, writes the intent (new
allocation records, allocations marked to stop) to the store *before*
anything is sent, pushes every changed node its complete desired set with a
new generation, derives allocation/deployment statuses and publishes changes
to the hub. Agent reports (`observe`) only record observations and trigger a
tick; they never command anything themselves.

Allocation records (modelfleet.store.v1.AllocationRecord), one per variant
per node, move through:

    created (desired RUNNING, STARTING) -> STARTED | FAILED     (from reports)
    desired STOPPED (STOPPING) -> deleted once the agent, having applied a
        generation without it, no longer reports it, or the node is lost.

Routing for the gateway (`routes`) is rebuilt from the records after every
tick: started allocations of running deployments on READY nodes only.

Scale (docs/performance.md: 1,000 nodes x 1,000 deployments): a tick is
*full* (`reconcile()`: periodic safety net, liveness changes, drain) or
*scoped* (`reconcile(ids)`: what one event touched: a start or stop, a
report, a registration), so nothing per event is O(nodes x deployments).
A scoped tick reconciles, re-routes and pushes only the touched deployments
and the nodes whose desired set changed. Node views are cached between
ticks (placements update them in place; a freed allocation or a
registration refreshes that node; a full tick rebuilds them). Placement
(O(nodes) per variant) runs only when its inputs changed: the revision, the
live nodes it runs on, or, for *open* variants (every eligible node, or
fewer targets than instances), the placement epoch, which grows whenever
capacity may have been freed or a node's eligibility changed. A settled
fixed-instances variant keeps the not-chosen reasons of its last placement.

Event-loop only; the store is synchronous and fast (SQLite WAL, behind the
control plane's in-memory CachedStore).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from control_plane import scheduler, state
from control_plane.fleet import Fleet, Liveness
from control_plane.hub import ChangeHub
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, common_pb2, deployments_pb2, models_pb2

log = logging.getLogger(__name__)

RS = common_pb2
RUNNING = records_pb2.DESIRED_STATE_RUNNING
STOPPED = records_pb2.DESIRED_STATE_STOPPED
FULL_TICK_EVERY_S = 30.0  # the periodic safety net; events and tick() handle everything sooner


@dataclass(frozen=True)
class Route:
    """A started worker the gateway may send calls to."""

    allocation_id: str
    node_id: str
    variant: str
    address: str


def now_ts() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


class Reconciler:
    def __init__(
        self,
        *,
        store: Store,
        fleet: Fleet,
        hub: ChangeHub,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._wall_clock = wall_clock
        self.fleet = fleet
        self.hub = hub
        self._clock = clock
        # (deployment_id, variant) -> the last placement, for reasons shown to users
        self.placements: dict[tuple[str, str], scheduler.Placement] = {}
        # (deployment_id, variant) -> (revision, nodes it ran on, epoch) its placement was computed for
        self._placed_for: dict[tuple[str, str], tuple[int, frozenset[str], int]] = {}
        self._open: set[str] = set()  # deployments with a variant that may take more nodes
        self._epoch = 0  # grows when capacity may have been freed or a node's eligibility changed
        self._fingerprint: int | None = None
        self._views: dict[str, scheduler.NodeView] | None = None  # see the module docstring
        self._auto_stop_at: dict[str, float] = {}  # running deployments with auto stop -> wall time it is due
        self._fleet_version = -1  # Fleet.version at the last full tick
        self._open_epoch = -1  # the epoch when tick() last retried the open variants
        self._last_full = float("-inf")
        self.full_every = FULL_TICK_EVERY_S
        self.routes: dict[str, list[Route]] = {}
        self.last_duration_s = 0.0
        # called after every tick with (seconds, "full" | "scoped"); control_plane.metrics sets it
        self.on_tick: Callable[[float, str], None] | None = None

    # ---- inputs ----------------------------------------------------------------
    def model_for(self, variant: deployments_pb2.VariantSpec) -> models_pb2.Model | None:
        return self.store.get_model(variant.model_id, variant.model_version)

    def node_views(self) -> dict[str, scheduler.NodeView]:
        """Capacity, usage and eligibility of every known node (a copy of the cache)."""
        return dict(self._cached_views())

    def _cached_views(self) -> dict[str, scheduler.NodeView]:
        if self._views is None:
            self._views = self._build_views()
        return self._views

    def capacity_changed(self) -> None:
        """Capacity may have been freed or a node changed: drop the cached views
        and let open variants be placed again."""
        self._views = None
        self._epoch += 1

    def _build_views(self) -> dict[str, scheduler.NodeView]:
        deployments = {d.deployment_id: d for d in self.store.list_deployments()}
        used: dict[str, list[float]] = {}
        for alloc in self.store.list_allocations():
            _add_usage(used, alloc, deployments)
        return {node.info.node_id: self._view(node, used) for node in self.store.list_nodes()}

    def _view(self, node: records_pb2.NodeRecord, used: dict[str, list[float]]) -> scheduler.NodeView:
        node_id = node.info.node_id
        liveness = self.fleet.state(node_id)
        u = used.get(node_id, [0.0, 0, 0])
        return scheduler.NodeView(
            node_id=node_id,
            cpus=node.info.capacity.cpus,
            memory_bytes=node.info.capacity.memory_bytes,
            gpus=node.info.capacity.gpus,
            labels=dict(node.info.labels),
            # a suspect node keeps what it has but gets nothing new
            ready=liveness != Liveness.LOST,
            schedulable=node.schedulable and liveness == Liveness.READY,
            used_cpus=u[0],
            used_memory=int(u[1]),
            used_gpus=int(u[2]),
        )

    def _refresh_view(self, node_id: str) -> None:
        """Recompute one node's cached view (its record, liveness and usage): O(its allocations)."""
        self._epoch += 1  # it may have gained capacity or eligibility
        if self._views is None:
            return
        node = self.store.get_node(node_id)
        if node is None:
            self._views.pop(node_id, None)
            return
        used: dict[str, list[float]] = {}
        records: dict[str, records_pb2.DeploymentRecord | None] = {}
        for alloc in self.store.list_allocations(node_id=node_id):
            if alloc.deployment_id not in records:
                records[alloc.deployment_id] = self.store.get_deployment(alloc.deployment_id)
            _add_usage(used, alloc, records)
        self._views[node_id] = self._view(node, used)

    # ---- the tick ----------------------------------------------------------------
    def tick(self) -> None:
        """The periodic loop's step: a full tick when a node's liveness changed
        (Fleet.version) or every `full_every` seconds, else a scoped tick over
        what time alone can change: open variants (waiting for capacity) and
        deployments whose auto stop is due."""
        now = self._clock()
        if self.fleet.version != self._fleet_version or now - self._last_full >= self.full_every:
            self.reconcile()
            return
        wall = self._wall_clock()
        due = {d for d, at in self._auto_stop_at.items() if wall >= at}
        retry = self._open if self._epoch != self._open_epoch else set()  # only if something may fit now
        self._open_epoch = self._epoch
        if due or retry:
            self.reconcile(due | retry)

    def reconcile(self, deployment_ids: Iterable[str] | None = None) -> None:
        """One tick: every deployment (None), or only `deployment_ids` (scoped)."""
        started = time.perf_counter()
        full = deployment_ids is None
        if full:
            self._fleet_version = self.fleet.version
            self._last_full = self._clock()
            views = self._views = self._build_views()
            fingerprint = hash(
                tuple((v.node_id, v.ready, v.schedulable, v.cpus, v.memory_bytes, v.gpus, tuple(sorted(v.labels.items())))
                      for v in views.values())
            )  # fmt: skip
            if fingerprint != self._fingerprint:
                self._fingerprint = fingerprint
                self._epoch += 1
            records = self.store.list_deployments()
            wanted = {r.deployment_id for r in records}
        else:
            views = self._cached_views()
            wanted = set(deployment_ids or ())
            records = []
            for deployment_id in sorted(wanted):
                rec = self.store.get_deployment(deployment_id)
                if rec is not None:
                    records.append(rec)
                else:  # deleted: forget what was kept for it
                    self._open.discard(deployment_id)
                    self._auto_stop_at.pop(deployment_id, None)
        dirty_nodes: set[str] = set()
        notify: list[str] = []
        # One commit for the whole tick, and only then is anything pushed (intent is durable
        # before agents act on it). A deployment whose reconcile raises keeps the writes it
        # made before the error (the store joins nested blocks); the next tick converges it.
        with self.store.transaction():
            for rec in records:
                mine: set[str] = set()
                try:
                    self._reconcile_deployment(rec, views, mine)
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
            self.push(node_id)
        self._rebuild_routes(None if full else wanted)
        self.last_duration_s = time.perf_counter() - started
        if self.on_tick is not None:
            self.on_tick(self.last_duration_s, "full" if full else "scoped")

    def _reconcile_deployment(
        self,
        rec: records_pb2.DeploymentRecord,
        views: dict[str, scheduler.NodeView],
        dirty_nodes: set[str],
    ) -> None:
        self._auto_stop_at.pop(rec.deployment_id, None)
        if rec.desired == RUNNING and rec.spec.HasField("auto_stop") and rec.HasField("start_time"):
            self._auto_stop_at[rec.deployment_id] = rec.start_time.seconds + rec.spec.auto_stop.seconds
            if self._wall_clock() >= rec.start_time.seconds + rec.spec.auto_stop.seconds:
                self._auto_stop_at.pop(rec.deployment_id, None)
                rec.desired = STOPPED
                rec.stop_reason = "auto stop"
                rec.revision += 1
                self.store.put_deployment(rec)
                log.info("deployment %s: auto stop after %ds", rec.deployment_id, rec.spec.auto_stop.seconds)
        allocs = self.store.list_allocations(deployment_id=rec.deployment_id)
        names = {v.name for v in rec.spec.variants}
        self._open.discard(rec.deployment_id)  # _place_variant adds it back while a variant is open
        with self.store.transaction():
            for alloc in allocs:
                if alloc.desired == RUNNING and (rec.desired == STOPPED or alloc.variant not in names):
                    self._stop_allocation(alloc, dirty_nodes, reason="deployment stopped")
                elif alloc.desired == STOPPED and rec.desired == STOPPED and self.fleet.state(alloc.node_id) == Liveness.LOST:
                    self._stop_allocation(alloc, dirty_nodes, reason="deployment stopped")  # nobody left to confirm
            if rec.desired == RUNNING:
                for variant in rec.spec.variants:
                    mine = [a for a in allocs if a.variant == variant.name and a.desired == RUNNING]
                    self._place_variant(rec, variant, mine, views, dirty_nodes)
        self._derive_status(rec.deployment_id)

    def _place_variant(
        self,
        rec: records_pb2.DeploymentRecord,
        variant: deployments_pb2.VariantSpec,
        running: list[records_pb2.AllocationRecord],
        views: dict[str, scheduler.NodeView],
        dirty_nodes: set[str],
    ) -> None:
        model = self.model_for(variant)
        if model is None:
            log.error("deployment %s: model %s v%d is gone", rec.deployment_id, variant.model_id, variant.model_version)
            return
        key = (rec.deployment_id, variant.name)
        current = {a.node_id for a in running if self.fleet.state(a.node_id) != Liveness.LOST}
        previous = self.placements.get(key)
        placed_for = self._placed_for.get(key)
        is_open = previous is None or variant.instances == 0 or len(previous.targets) < variant.instances
        if (
            previous is not None
            and placed_for is not None
            and placed_for[:2] == (rec.revision, frozenset(current))
            and set(previous.targets) == current
            and (not is_open or placed_for[2] == self._epoch)
            and len(running) == len(current)
        ):
            if is_open:
                self._open.add(rec.deployment_id)
            return  # settled: nothing placement depends on has changed
        demand = scheduler.demand_for(variant, model_bytes=model.model_bytes)
        placement = scheduler.place(demand, list(views.values()), current=current)
        self.placements[key] = placement
        self._placed_for[key] = (rec.revision, frozenset(placement.targets), self._epoch)
        if variant.instances == 0 or len(placement.targets) < variant.instances:
            self._open.add(rec.deployment_id)
        targets = set(placement.targets)
        for node_id in placement.targets:
            if node_id in current:
                continue
            alloc = self._new_allocation(rec, variant, model, node_id)
            self.store.put_allocation(alloc)
            dirty_nodes.add(node_id)
            view = views[node_id]
            views[node_id] = dataclasses.replace(
                view,
                used_cpus=view.used_cpus + demand.cpus,
                used_memory=view.used_memory + demand.memory_bytes,
                used_gpus=view.used_gpus + demand.gpus,
            )
        for alloc in running:
            if alloc.node_id in targets:
                continue
            if self.fleet.state(alloc.node_id) == Liveness.LOST:
                changed = _set_route(alloc, RS.ROUTING_STATE_FAILED, "node lost")
                if variant.instances > 0:
                    # replaced elsewhere; the lost node stops it when it returns
                    alloc.desired = STOPPED
                    changed = True
                if changed:
                    self.store.put_allocation(alloc)
                    self.capacity_changed()
            else:
                self._stop_allocation(alloc, dirty_nodes, reason="no longer a target")

    def _new_allocation(
        self,
        rec: records_pb2.DeploymentRecord,
        variant: deployments_pb2.VariantSpec,
        model: models_pb2.Model,
        node_id: str,
    ) -> records_pb2.AllocationRecord:
        allocation_id = f"{rec.deployment_id}-{uuid.uuid4().hex[:10]}"
        spec = agent_pb2.AllocationSpec(
            allocation_id=allocation_id,
            deployment_id=rec.deployment_id,
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
        return records_pb2.AllocationRecord(
            allocation_id=allocation_id,
            deployment_id=rec.deployment_id,
            variant=variant.name,
            node_id=node_id,
            desired=RUNNING,
            routing_state=RS.ROUTING_STATE_STARTING,
            reason="",
            created_at=now_ts(),
            spec=spec,
        )

    def _stop_allocation(self, alloc: records_pb2.AllocationRecord, dirty_nodes: set[str], *, reason: str) -> None:
        if self.fleet.state(alloc.node_id) == Liveness.LOST:
            self.store.delete_allocation(alloc.allocation_id)
            self.fleet.forget_stats(alloc.node_id, alloc.allocation_id)
            self.capacity_changed()
            return
        alloc.desired = STOPPED
        if alloc.routing_state != RS.ROUTING_STATE_FAILED:
            _set_route(alloc, RS.ROUTING_STATE_STOPPING, reason)
        self.store.put_allocation(alloc)
        dirty_nodes.add(alloc.node_id)

    # ---- statuses -----------------------------------------------------------------
    def _derive_status(self, deployment_id: str) -> None:
        rec = self.store.get_deployment(deployment_id)
        if rec is None:
            return
        allocs = self.store.list_allocations(deployment_id=deployment_id)
        views: list[state.VariantView] = []
        waiting: list[str] = []
        failures: list[str] = []
        for variant in rec.spec.variants:
            mine = [a for a in allocs if a.variant == variant.name]
            placement = self.placements.get((deployment_id, variant.name))
            routes = [a.routing_state for a in mine if a.desired == RUNNING]
            view = state.variant_view(routes, target_count=len(placement.targets) if placement else 0, instances=variant.instances, name=variant.name)
            views.append(dataclasses.replace(view, stopping=view.stopping + sum(1 for a in mine if a.desired == STOPPED)))
            failures += [a.reason for a in mine if a.routing_state == RS.ROUTING_STATE_FAILED]
            if placement and not placement.targets:
                waiting.append(placement.shortfall or _summarize(placement.not_chosen))
        ever_served = rec.ever_served or any(v.started for v in views)
        status, reason = state.deployment_status(
            desired=rec.desired,
            variants=views,
            ever_served=ever_served,
            waiting_reason=("waiting for capacity: " + "; ".join(waiting)) if waiting else "",
            failure_reasons=failures,
        )
        if rec.desired == STOPPED and rec.stop_reason and status == common_pb2.DEPLOYMENT_STATUS_STOPPED:
            reason = rec.stop_reason
        if (status, reason, ever_served) != (rec.status, rec.status_reason, rec.ever_served):
            rec.status, rec.status_reason, rec.ever_served = status, reason, ever_served
            if status == common_pb2.DEPLOYMENT_STATUS_STOPPED and not rec.HasField("stopped_at"):
                rec.stopped_at.CopyFrom(now_ts())
            self.store.put_deployment(rec)
            self.hub.notify(deployment_id)

    # ---- agents -----------------------------------------------------------------------
    def push(self, node_id: str) -> None:
        """Send the node its complete desired set if it changed on this stream."""
        session = self.fleet.session(node_id)
        node = self.store.get_node(node_id)
        if session is None or node is None:
            return
        specs = sorted(
            (a.spec for a in self.store.list_allocations(node_id=node_id) if a.desired == RUNNING),
            key=lambda s: s.allocation_id,
        )
        digest = hashlib.sha256(b"".join(s.SerializeToString(deterministic=True) for s in specs)).digest()
        if digest == session.sent_digest:
            return
        node.generation += 1
        self.store.put_node(node)
        session.sent_digest = digest
        session.send(agent_pb2.ControlMessage(assignment=agent_pb2.Assignment(generation=node.generation, allocations=specs)))

    def observe(
        self,
        node_id: str,
        reports: Iterable[agent_pb2.AllocationReport],
        *,
        applied_generation: int,
        full_registration: bool = False,
    ) -> None:
        """Record what an agent runs (its complete list), then reconcile.

        Reports for allocations of other nodes or unknown ids change nothing:
        the agent stops those itself, as they are not in its desired set."""
        self.fleet.touch(node_id, applied_generation=applied_generation)
        node = self.store.get_node(node_id)
        caught_up = full_registration or (node is not None and applied_generation >= node.generation)
        by_id = {r.allocation_id: r for r in reports}
        touched: set[str] = set()
        freed = False
        with self.store.transaction():
            for alloc in self.store.list_allocations(node_id=node_id):
                report = by_id.pop(alloc.allocation_id, None)
                was_failed = alloc.routing_state == RS.ROUTING_STATE_FAILED
                if alloc.desired == STOPPED and caught_up and (report is None or report.routing_state in _DONE):
                    # the agent applied the stop and nothing runs any more
                    self.store.delete_allocation(alloc.allocation_id)
                    self.fleet.forget_stats(node_id, alloc.allocation_id)
                    touched.add(alloc.deployment_id)
                    freed = True
                elif _apply_report(alloc, report, registration=full_registration):
                    self.store.put_allocation(alloc)
                    touched.add(alloc.deployment_id)
                    freed |= not was_failed and alloc.routing_state == RS.ROUTING_STATE_FAILED
        for stale in by_id:
            log.info("node %s reports allocation %s that is not its own; ignored", node_id, stale)
        if freed or full_registration:
            # capacity was freed, or the node is new or changed: open variants may take it
            self._refresh_view(node_id)
        if full_registration:
            # reconcile what runs there and what may take it, and send it its desired set
            on_node = {a.deployment_id for a in self.store.list_allocations(node_id=node_id)}
            self.reconcile(touched | on_node | self._open)
            self.push(node_id)
        elif touched:
            self.reconcile(touched | self._open if freed else touched)  # freed capacity: open variants may fit
        for deployment_id in touched:
            self.hub.notify(deployment_id)

    def on_liveness_change(self, node_ids: list[str]) -> None:
        affected = {a.deployment_id for n in node_ids for a in self.store.list_allocations(node_id=n)}
        for node_id in node_ids:
            log.warning("node %s is now %s", node_id, self.fleet.state(node_id).value)
        self.capacity_changed()
        self.reconcile()
        for deployment_id in affected:
            self.hub.notify(deployment_id)

    # ---- routing ----------------------------------------------------------------------
    def _rebuild_routes(self, deployment_ids: set[str] | None = None) -> None:
        """Routes of every deployment (None) or of the given ones only."""
        if deployment_ids is None:
            running = {d.deployment_id for d in self.store.list_deployments() if d.desired == RUNNING}
            allocs = self.store.list_allocations()
            routes: dict[str, list[Route]] = {}
        else:
            running = set()
            allocs = []
            for deployment_id in deployment_ids:
                rec = self.store.get_deployment(deployment_id)
                if rec is not None and rec.desired == RUNNING:
                    running.add(deployment_id)
                    allocs += self.store.list_allocations(deployment_id=deployment_id)
            routes = {k: v for k, v in self.routes.items() if k not in deployment_ids}
        for alloc in allocs:
            if (
                alloc.deployment_id in running
                and alloc.desired == RUNNING
                and alloc.routing_state == RS.ROUTING_STATE_STARTED
                and alloc.worker_address
                and self.fleet.state(alloc.node_id) == Liveness.READY
            ):
                routes.setdefault(alloc.deployment_id, []).append(
                    Route(alloc.allocation_id, alloc.node_id, alloc.variant, alloc.worker_address)
                )
        self.routes = routes


def _variant(rec: records_pb2.DeploymentRecord, name: str) -> deployments_pb2.VariantSpec | None:
    for variant in rec.spec.variants:
        if variant.name == name:
            return variant
    return None


def _add_usage(
    used: dict[str, list[float]],
    alloc: records_pb2.AllocationRecord,
    deployments: Mapping[str, records_pb2.DeploymentRecord | None],
) -> None:
    """Count what `alloc` holds on its node into used[node] = [cpus, memory, gpus]."""
    if alloc.routing_state == RS.ROUTING_STATE_FAILED:
        return  # a failed worker holds nothing
    rec = deployments.get(alloc.deployment_id)
    variant = _variant(rec, alloc.variant) if rec else None
    if variant is None:
        return
    demand = scheduler.demand_for(variant, model_bytes=alloc.spec.model_bytes)
    u = used.setdefault(alloc.node_id, [0.0, 0, 0])
    u[0] += demand.cpus
    u[1] += demand.memory_bytes
    u[2] += demand.gpus


def _set_route(alloc: records_pb2.AllocationRecord, routing_state: int, reason: str) -> bool:
    if alloc.routing_state == routing_state and alloc.reason == reason:
        return False
    alloc.routing_state = routing_state  # type: ignore[assignment]
    alloc.reason = reason
    return True


_DONE = (RS.ROUTING_STATE_STOPPED, RS.ROUTING_STATE_FAILED)


def _apply_report(
    alloc: records_pb2.AllocationRecord,
    report: agent_pb2.AllocationReport | None,
    *,
    registration: bool,
) -> bool:
    """Fold one observation into the record. True if the record changed."""
    if report is None:
        if alloc.desired == STOPPED:
            return False  # not applied yet (see observe)
        if registration and alloc.routing_state in (RS.ROUTING_STATE_STARTED, RS.ROUTING_STATE_FAILED):
            # the node came back without this worker: it is started again
            return _set_route(alloc, RS.ROUTING_STATE_STARTING, "restarting on the node")
        return False
    changed = False
    new_state = report.routing_state
    if alloc.desired == STOPPED and new_state in (RS.ROUTING_STATE_STARTING, RS.ROUTING_STATE_STARTED):
        new_state = RS.ROUTING_STATE_STOPPING
    if new_state != RS.ROUTING_STATE_UNSPECIFIED:
        changed |= _set_route(alloc, new_state, report.reason)
    if report.worker_address != alloc.worker_address:
        alloc.worker_address = report.worker_address
        changed = True
    if new_state == RS.ROUTING_STATE_STARTED and report.HasField("started_at"):
        if alloc.start_time != report.started_at:
            alloc.start_time.CopyFrom(report.started_at)
            changed = True
    return changed


def _summarize(not_chosen: dict[str, str] | object) -> str:
    items = dict(not_chosen)  # type: ignore[call-overload]
    if not items:
        return "no nodes have joined the fleet"
    return ", ".join(f"{node}: {why}" for node, why in sorted(items.items()))
