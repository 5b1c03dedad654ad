"""Unit tests of the reconcile loop and node liveness, tick by tick: a fake
clock, the in-memory store and agent sessions whose outboxes the test reads.
No sockets, no processes (those are in test_integration.py)."""

from __future__ import annotations

import pytest
from reconcile_world import RUNNING, STOPPED, Clock, ReconcileWorld, S, model

from control_plane.deployments.views import deployment_view
from control_plane.fleet.liveness import Fleet, Liveness
from control_plane.reconcile.reconciler import now_ts
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, deployments_pb2


@pytest.fixture(autouse=True)
def _no_real_infrastructure(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests must not open sockets or start processes."""
    import socket
    import subprocess

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unit test touched real infrastructure")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


class World(ReconcileWorld):
    def __init__(self) -> None:
        super().__init__(wall=1000.0, models=[model(1, sha256="ab" * 32)])

    def deploy(self, deployment_id: str, *, instances: int = 0, threads: int = 1, auto_stop_s: int = 0) -> None:
        spec = deployments_pb2.StartDeploymentRequest(deployment_id=deployment_id)
        spec.variants.add(name="m-v1", model_id="m", model_version=1, weight=100, inference_threads=threads, model_threads=1, queue_capacity=8, instances=instances)
        if auto_stop_s:
            spec.auto_stop.FromSeconds(auto_stop_s)
        record = records_pb2.DeploymentRecord(deployment_id=deployment_id, spec=spec, desired=RUNNING, start_time=now_ts())
        record.start_time.seconds = int(self.wall.now)
        self.store.put_deployment(record)
        self.rec.reconcile()

    def assignments(self, node_id: str) -> list[agent_pb2.Assignment]:
        out = []
        queue = self.sessions[node_id].outbox
        while not queue.empty():
            message = queue.get_nowait()
            if message is not None and message.WhichOneof("kind") == "assignment":
                out.append(message.assignment)
        return out

    def report_all(self, node_id: str, state: int, reason: str = "") -> None:
        node = self.store.get_node(node_id)
        reports = [
            agent_pb2.AllocationReport(allocation_id=a.allocation_id, deployment_id=a.deployment_id, routing_state=state, reason=reason, worker_address=f"{node_id}:1")
            for a in self.store.list_allocations(node_id=node_id)
            if a.desired == RUNNING
        ]
        self.rec.agents.observe(node_id, reports, applied_generation=node.generation)

    def view(self, deployment_id: str) -> deployments_pb2.Deployment:
        return deployment_view(self.store.get_deployment(deployment_id), reads=self.rec.reads)


def test_all_nodes_deployment_is_placed_pushed_and_derived() -> None:
    w = World()
    w.join("a")
    w.join("b")
    w.deploy("d")
    for node in ("a", "b"):
        # on connecting, each got its (empty) desired set; then the deployment
        empty, assignment = w.assignments(node)
        assert list(empty.allocations) == [] and assignment.generation > empty.generation
        assert [s.deployment_id for s in assignment.allocations] == ["d"]
        assert assignment.allocations[0].model_sha256 == "ab" * 32
    assert w.store.get_deployment("d").status == S.DEPLOYMENT_STATUS_DEPLOYING
    w.report_all("a", S.ROUTING_STATE_STARTED)
    view = w.view("d")
    assert view.allocations[0].allocation_state == S.ALLOCATION_STATE_STARTED
    assert [r.node_id for r in w.rec.route_table.by_deployment["d"]] == ["a"]
    w.report_all("b", S.ROUTING_STATE_STARTED)
    assert w.view("d").allocations[0].allocation_state == S.ALLOCATION_STATE_FULLY_ALLOCATED
    assert w.store.get_deployment("d").status == S.DEPLOYMENT_STATUS_RUNNING


def test_same_desired_set_is_not_pushed_again_and_generation_only_grows() -> None:
    w = World()
    w.join("a")
    w.deploy("d")
    first = w.assignments("a")
    w.rec.reconcile()
    w.rec.reconcile()
    assert w.assignments("a") == []
    w.deploy("e")
    (second,) = w.assignments("a")
    assert second.generation > first[-1].generation
    assert sorted(s.deployment_id for s in second.allocations) == ["d", "e"]


def test_lost_node_routes_fail_and_fixed_instances_move() -> None:
    w = World()
    w.join("a")
    w.join("b")
    w.deploy("all")
    w.deploy("one", instances=1)
    w.report_all("a", S.ROUTING_STATE_STARTED)
    w.report_all("b", S.ROUTING_STATE_STARTED)
    (one_node,) = [a.node_id for a in w.store.list_allocations(deployment_id="one")]
    other = "b" if one_node == "a" else "a"
    assert w.fleet.detach(w.sessions[one_node])
    assert w.fleet.state(one_node) == Liveness.SUSPECT
    w.rec.agents.on_liveness_change([one_node])
    assert one_node not in {r.node_id for r in w.rec.route_table.by_deployment["all"]}  # not routed while suspect
    w.clock.now += 1.5
    w.fleet.touch(other)
    assert w.fleet.sweep() == [one_node]
    w.rec.agents.on_liveness_change([one_node])
    table = w.view("all").allocations[0].routing_table
    assert table[one_node].routing_state == S.ROUTING_STATE_FAILED and table[one_node].reason == "node lost"
    # every eligible node (Elasticsearch): the lost one is no longer a target
    assert w.view("all").allocations[0].target_nodes == 1
    assert w.store.get_deployment("all").status == S.DEPLOYMENT_STATUS_RUNNING
    moved = [a for a in w.store.list_allocations(deployment_id="one") if a.desired == RUNNING]
    assert [a.node_id for a in moved] == [other]


def test_stop_waits_for_the_agent_then_deletes() -> None:
    w = World()
    w.join("a")
    w.deploy("d")
    w.report_all("a", S.ROUTING_STATE_STARTED)
    w.assignments("a")
    rec = w.store.get_deployment("d")
    rec.desired = STOPPED
    w.store.put_deployment(rec)
    w.rec.reconcile()
    (assignment,) = w.assignments("a")
    assert list(assignment.allocations) == []
    assert w.store.get_deployment("d").status == S.DEPLOYMENT_STATUS_STOPPING
    # a report from before the agent applied the stop does not delete it
    alloc = w.store.list_allocations(deployment_id="d")[0]
    w.rec.agents.observe("a", [], applied_generation=assignment.generation - 1)
    assert w.store.list_allocations(deployment_id="d")
    w.rec.agents.observe("a", [], applied_generation=assignment.generation)
    assert w.store.get_allocation(alloc.allocation_id) is None
    assert w.store.get_deployment("d").status == S.DEPLOYMENT_STATUS_STOPPED


def test_reports_for_other_nodes_or_unknown_allocations_change_nothing() -> None:
    w = World()
    w.join("a")
    w.join("b")
    w.deploy("d")
    b_alloc = next(a for a in w.store.list_allocations(node_id="b"))
    w.rec.agents.observe("a", [agent_pb2.AllocationReport(allocation_id=b_alloc.allocation_id, routing_state=S.ROUTING_STATE_STARTED)], applied_generation=1)
    w.rec.agents.observe("a", [agent_pb2.AllocationReport(allocation_id="ghost", routing_state=S.ROUTING_STATE_STARTED)], applied_generation=1)
    assert w.store.get_allocation(b_alloc.allocation_id).routing_state == S.ROUTING_STATE_STARTING
    assert "d" not in w.rec.route_table.by_deployment


def test_failed_load_everywhere_is_failed_with_the_reason() -> None:
    w = World()
    w.join("a")
    w.deploy("d")
    w.report_all("a", S.ROUTING_STATE_FAILED, "load error: bad model")
    rec = w.store.get_deployment("d")
    assert rec.status == S.DEPLOYMENT_STATUS_FAILED
    assert "load error: bad model" in rec.status_reason


def test_node_that_cannot_fit_waits_and_a_joining_node_gets_it() -> None:
    w = World()
    w.join("small", cpus=1)
    w.deploy("big", threads=2, instances=1)
    assert w.store.list_allocations(deployment_id="big") == []
    assert "waiting for capacity" in w.store.get_deployment("big").status_reason
    w.join("large", cpus=4)
    assert [a.node_id for a in w.store.list_allocations(deployment_id="big")] == ["large"]


def test_auto_stop_stops_the_deployment_when_its_time_passes() -> None:
    w = World()
    w.join("a")
    w.deploy("d", auto_stop_s=3600)
    w.report_all("a", S.ROUTING_STATE_STARTED)
    w.wall.now += 3599
    w.rec.reconcile()
    assert w.store.get_deployment("d").desired == RUNNING
    w.wall.now += 1
    w.rec.reconcile()
    rec = w.store.get_deployment("d")
    assert rec.desired == STOPPED and rec.stop_reason == "auto stop"


def test_liveness_transitions_are_explicit() -> None:
    clock = Clock()
    fleet = Fleet(heartbeat_interval=0.2, node_timeout=1.0, clock=clock)
    fleet.attach("n")
    clock.now += 0.7  # > 3 heartbeats of silence
    assert fleet.sweep() == ["n"] and fleet.state("n") == Liveness.SUSPECT
    fleet.touch("n")
    assert fleet.state("n") == Liveness.READY
    clock.now += 1.1
    assert fleet.sweep() == ["n"] and fleet.state("n") == Liveness.LOST
    fleet.recover(["other"])
    assert fleet.state("other") == Liveness.SUSPECT


# ---- scale: events reconcile only what they touched -------------------------------


def test_events_reconcile_only_what_they_touch_and_settled_placements_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from control_plane.planning import scheduler

    w = World()
    for node in ("a", "b", "c"):
        w.join(node)
    w.deploy("one", instances=1)
    w.deploy("two", instances=1)
    for node in ("a", "b", "c"):
        w.report_all(node, S.ROUTING_STATE_STARTED)
        w.assignments(node)
    calls: list[str] = []
    real_place = scheduler.place
    monkeypatch.setattr(scheduler, "place", lambda *a, **k: calls.append("place") or real_place(*a, **k))
    # a third deployment starts: only it is placed, only its node hears about it
    w.store.put_deployment(records_pb2.DeploymentRecord(
        deployment_id="three", spec=w.store.get_deployment("one").spec, desired=RUNNING, start_time=now_ts()))  # fmt: skip
    w.rec.reconcile(["three"])
    assert calls == ["place"]
    (target,) = [a.node_id for a in w.store.list_allocations(deployment_id="three")]
    assert [n for n in ("a", "b", "c") if w.assignments(n)] == [target]
    # its own report plans it once more (its allocations changed); full ticks then leave it alone
    w.report_all(target, S.ROUTING_STATE_STARTED)
    calls.clear()
    w.rec.reconcile()
    w.rec.reconcile()
    assert calls == [] and w.store.get_deployment("three").status == S.DEPLOYMENT_STATUS_RUNNING
    assert {r.node_id for r in w.rec.route_table.by_deployment["three"]} == {target}


def test_freed_capacity_places_a_waiting_deployment_at_once() -> None:
    w = World()
    w.join("only", cpus=2)
    w.deploy("first", threads=2, instances=1)
    w.report_all("only", S.ROUTING_STATE_STARTED)
    w.deploy("waiting", threads=2, instances=1)
    assert w.store.list_allocations(deployment_id="waiting") == []
    # stopping the first frees the node once the agent confirms; the waiting one is placed in that same event
    rec = w.store.get_deployment("first")
    rec.desired = STOPPED
    w.store.put_deployment(rec)
    w.rec.reconcile(["first"])
    (assignment,) = w.assignments("only")[-1:]
    w.rec.agents.observe("only", [], applied_generation=assignment.generation)
    assert [a.node_id for a in w.store.list_allocations(deployment_id="waiting")] == ["only"]


def test_periodic_tick_runs_due_auto_stops_and_a_full_tick_after_liveness_changes() -> None:
    w = World()
    w.join("a")
    w.deploy("d", auto_stop_s=3600)
    w.report_all("a", S.ROUTING_STATE_STARTED)
    w.rec.tick()
    assert w.store.get_deployment("d").desired == RUNNING
    w.wall.now += 3600
    w.rec.tick()
    assert w.store.get_deployment("d").stop_reason == "auto stop"
    ticks: list[str] = []
    w.rec.on_tick = lambda seconds, scope: ticks.append(scope)
    w.rec.tick()
    assert ticks == []  # nothing due, nothing open, no liveness change: nothing to do
    w.fleet.detach(w.sessions["a"])  # READY -> SUSPECT without the reconciler being told
    w.rec.tick()
    assert ticks == ["full"]


def test_a_drain_with_nowhere_to_go_moves_once_a_node_joins() -> None:
    w = World()
    w.join("a")
    w.deploy("d", instances=1)
    w.report_all("a", S.ROUTING_STATE_STARTED)
    node = w.store.get_node("a")
    node.schedulable = False  # drained, as NodeService does, then a full tick
    w.store.put_node(node)
    w.rec.reconcile()
    w.rec.reconcile()  # nowhere to go: it keeps serving on a, and the quiet plan is kept
    assert [(a.node_id, a.desired) for a in w.store.list_allocations(deployment_id="d")] == [("a", RUNNING)]
    w.join("b")  # capacity appears: the waiting drain is planned again and moves (make-before-break)
    placed = {a.node_id: a.desired for a in w.store.list_allocations(deployment_id="d")}
    assert placed == {"a": RUNNING, "b": RUNNING}
    w.report_all("b", S.ROUTING_STATE_STARTED)
    assert {a.node_id: a.desired for a in w.store.list_allocations(deployment_id="d")} == {"a": STOPPED, "b": RUNNING}
