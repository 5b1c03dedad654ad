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

Node loss: a LOST node's routes become FAILED "node lost" (a route its agent
already reported STOPPED, on a graceful shutdown, stays STOPPED); a variant
with a fixed instance count is placed on other nodes where it fits and the
lost node's allocation is marked to stop (its agent stops the worker if it
ever returns: it is absent from the desired set, fenced by generation).

Drain (a cordoned node, `schedulable` false in its durable record) is
make-before-break: allocations on cordoned nodes ("movers") are left out of
the scheduler's `current`, so it places replacements on eligible nodes;
a mover is stopped only once the variant has enough STARTED allocations
elsewhere (its instance count, or for "every node" variants every target and
at least one), so capacity never drops below what was serving. With nowhere
to go, a mover keeps serving on the cordoned node.

Routing for the gateway (`routes`) is rebuilt from the records after every
tick: started allocations of running deployments on READY nodes only.

Event-loop only; the store is synchronous and fast (SQLite WAL).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
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
        self.routes: dict[str, list[Route]] = {}
        self.last_duration_s = 0.0

    # ---- inputs ----------------------------------------------------------------
    def model_for(self, variant: deployments_pb2.VariantSpec) -> models_pb2.Model | None:
        return self.store.get_model(variant.model_id, variant.model_version)

    def node_views(self) -> dict[str, scheduler.NodeView]:
        """Capacity, usage and eligibility of every known node."""
        deployments = {d.deployment_id: d for d in self.store.list_deployments()}
        used: dict[str, list[float]] = {}
        for alloc in self.store.list_allocations():
            if alloc.routing_state == RS.ROUTING_STATE_FAILED:
                continue  # a failed worker holds nothing (and is not restarted)
            if alloc.desired == STOPPED and alloc.routing_state == RS.ROUTING_STATE_STOPPED:
                continue  # stopped for good (a wanted one that stopped is started again: still counted)
            rec = deployments.get(alloc.deployment_id)
            variant = _variant(rec, alloc.variant) if rec else None
            if variant is None:
                continue
            demand = scheduler.demand_for(variant, model_bytes=alloc.spec.model_bytes)
            u = used.setdefault(alloc.node_id, [0.0, 0, 0])
            u[0] += demand.cpus
            u[1] += demand.memory_bytes
            u[2] += demand.gpus
        views: dict[str, scheduler.NodeView] = {}
        for node in self.store.list_nodes():
            node_id = node.info.node_id
            liveness = self.fleet.state(node_id)
            u = used.get(node_id, [0.0, 0, 0])
            views[node_id] = scheduler.NodeView(
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
        return views

    # ---- the tick ----------------------------------------------------------------
    def reconcile(self) -> None:
        started = time.perf_counter()
        views = self.node_views()
        cordoned = frozenset(n.info.node_id for n in self.store.list_nodes() if not n.schedulable)
        dirty_nodes: set[str] = set()
        for rec in self.store.list_deployments():
            mine: set[str] = set()
            try:
                self._reconcile_deployment(rec, views, mine, cordoned=cordoned)
            except Exception:  # one bad deployment must not stop the others
                log.exception("reconcile of deployment %s failed", rec.deployment_id)
            if mine:
                dirty_nodes |= mine
                self.hub.notify(rec.deployment_id)
        for node_id in dirty_nodes | {n for n in views if self.fleet.session(n) is not None}:
            self.push(node_id)
        self._rebuild_routes()
        self.last_duration_s = time.perf_counter() - started

    def _reconcile_deployment(
        self,
        rec: records_pb2.DeploymentRecord,
        views: dict[str, scheduler.NodeView],
        dirty_nodes: set[str],
        *,
        cordoned: frozenset[str] = frozenset(),
    ) -> None:
        if rec.desired == RUNNING and rec.spec.HasField("auto_stop") and rec.HasField("start_time"):
            if self._wall_clock() >= rec.start_time.seconds + rec.spec.auto_stop.seconds:
                rec.desired = STOPPED
                rec.stop_reason = "auto stop"
                rec.revision += 1
                self.store.put_deployment(rec)
                log.info("deployment %s: auto stop after %ds", rec.deployment_id, rec.spec.auto_stop.seconds)
        allocs = self.store.list_allocations(deployment_id=rec.deployment_id)
        names = {v.name for v in rec.spec.variants}
        with self.store.transaction():
            for alloc in allocs:
                if alloc.desired == RUNNING and (rec.desired == STOPPED or alloc.variant not in names):
                    self._stop_allocation(alloc, dirty_nodes, reason="deployment stopped")
                elif alloc.desired == STOPPED and rec.desired == STOPPED and self.fleet.state(alloc.node_id) == Liveness.LOST:
                    self._stop_allocation(alloc, dirty_nodes, reason="deployment stopped")  # nobody left to confirm
            if rec.desired == RUNNING:
                for variant in rec.spec.variants:
                    mine = [a for a in allocs if a.variant == variant.name and a.desired == RUNNING]
                    self._place_variant(rec, variant, mine, views, dirty_nodes, cordoned=cordoned)
        self._derive_status(rec.deployment_id)

    def _place_variant(
        self,
        rec: records_pb2.DeploymentRecord,
        variant: deployments_pb2.VariantSpec,
        running: list[records_pb2.AllocationRecord],
        views: dict[str, scheduler.NodeView],
        dirty_nodes: set[str],
        *,
        cordoned: frozenset[str] = frozenset(),
    ) -> None:
        model = self.model_for(variant)
        if model is None:
            log.error("deployment %s: model %s v%d is gone", rec.deployment_id, variant.model_id, variant.model_version)
            return
        demand = scheduler.demand_for(variant, model_bytes=model.model_bytes)
        alive = [a for a in running if self.fleet.state(a.node_id) != Liveness.LOST]
        movers = [a for a in alive if a.node_id in cordoned]
        current = {a.node_id for a in alive if a.node_id not in cordoned}
        placement = scheduler.place(demand, list(views.values()), current=current)
        self.placements[(rec.deployment_id, variant.name)] = placement
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
        self._move_off_cordoned(rec, variant, movers, running, targets, dirty_nodes)
        mover_ids = {a.allocation_id for a in movers}
        for alloc in running:
            if alloc.node_id in targets or alloc.allocation_id in mover_ids:
                continue
            if self.fleet.state(alloc.node_id) == Liveness.LOST:
                if alloc.routing_state == RS.ROUTING_STATE_STOPPED:
                    changed = False  # its agent shut down gracefully and said so
                else:
                    changed = _set_route(alloc, RS.ROUTING_STATE_FAILED, "node lost")
                if variant.instances > 0:
                    # replaced elsewhere; the lost node stops it when it returns
                    alloc.desired = STOPPED
                    changed = True
                if changed:
                    self.store.put_allocation(alloc)
            else:
                self._stop_allocation(alloc, dirty_nodes, reason="no longer a target")

    def _move_off_cordoned(
        self,
        rec: records_pb2.DeploymentRecord,
        variant: deployments_pb2.VariantSpec,
        movers: list[records_pb2.AllocationRecord],
        running: list[records_pb2.AllocationRecord],
        targets: set[str],
        dirty_nodes: set[str],
    ) -> None:
        """Make-before-break: stop allocations on cordoned nodes only as far as
        STARTED allocations on target nodes replace them."""
        if not movers:
            return
        wanted = variant.instances if variant.instances > 0 else max(1, len(targets))
        started = sum(
            1
            for a in running
            if a.node_id in targets
            and a.routing_state == RS.ROUTING_STATE_STARTED
            and self.fleet.state(a.node_id) == Liveness.READY
        )
        keep = max(0, min(len(movers), wanted - started))
        # the serving ones are kept longest
        movers = sorted(movers, key=lambda a: (a.routing_state != RS.ROUTING_STATE_STARTED, a.node_id))
        for alloc in movers[keep:]:
            log.info("deployment %s: %s on drained node %s is replaced; stopping it", rec.deployment_id, alloc.allocation_id, alloc.node_id)
            self._stop_allocation(alloc, dirty_nodes, reason="node drained; moved to another node")

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
        with self.store.transaction():
            for alloc in self.store.list_allocations(node_id=node_id):
                report = by_id.pop(alloc.allocation_id, None)
                if alloc.desired == STOPPED and caught_up and (report is None or report.routing_state in _DONE):
                    # the agent applied the stop and nothing runs any more
                    self.store.delete_allocation(alloc.allocation_id)
                    self.fleet.forget_stats(node_id, alloc.allocation_id)
                    touched.add(alloc.deployment_id)
                elif _apply_report(alloc, report, registration=full_registration):
                    self.store.put_allocation(alloc)
                    touched.add(alloc.deployment_id)
        for stale in by_id:
            log.info("node %s reports allocation %s that is not its own; ignored", node_id, stale)
        if touched or full_registration:
            self.reconcile()
            for deployment_id in touched:
                self.hub.notify(deployment_id)

    def on_liveness_change(self, node_ids: list[str]) -> None:
        affected = {a.deployment_id for n in node_ids for a in self.store.list_allocations(node_id=n)}
        for node_id in node_ids:
            log.warning("node %s is now %s", node_id, self.fleet.state(node_id).value)
        self.reconcile()
        for deployment_id in affected:
            self.hub.notify(deployment_id)

    # ---- routing ----------------------------------------------------------------------
    def _rebuild_routes(self) -> None:
        routes: dict[str, list[Route]] = {}
        running = {d.deployment_id for d in self.store.list_deployments() if d.desired == RUNNING}
        for alloc in self.store.list_allocations():
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
