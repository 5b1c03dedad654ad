"""Unit tests, tick by tick with fake clocks and the in-memory store: rolling
updates (make-before-break), retiring variants, the event log, every
deployment status transition, auto stop, and the deployment service's
quota, restart and dry run. No sockets, no processes."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import field_mask_pb2
from reconcile_world import RUNNING, STOPPED, ReconcileWorld, S, model

from control_plane import errors
from control_plane.deployments.service import DeploymentService
from control_plane.planning.lifecycle import STATUS_TRANSITIONS
from control_plane.reconcile.events import MAX_EVENTS_PER_DEPLOYMENT
from control_plane.store.memory import MemoryStore
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, common_pb2, models_pb2
from modelfleet.v1 import deployments_pb2 as dpb

D = common_pb2  # statuses
STARTED = S.ROUTING_STATE_STARTED


@pytest.fixture(autouse=True)
def _no_real_infrastructure(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests open no network socket and start no process (asyncio's own
    AF_UNIX self-pipe is allowed)."""
    import socket
    import subprocess

    real_socket = socket.socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unit test touched real infrastructure")

    def unix_only(family: int = socket.AF_INET, *args: object, **kwargs: object) -> socket.socket:
        if family != socket.AF_UNIX:
            refuse()
        return real_socket(family, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", unix_only)
    monkeypatch.setattr(subprocess, "Popen", refuse)


class FakeRegistry:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def resolve_deployable(self, model_id: str, version: int = 0) -> models_pb2.Model:
        model = self.store.get_model(model_id, version)
        if model is None:
            raise errors.NotFound(f"model '{model_id}' not found")
        return model


class World(ReconcileWorld):
    def __init__(self) -> None:
        super().__init__(wall=1_700_000_000.0, models=[model(v, sha256=f"{v:02d}" * 32) for v in (1, 2)])
        self.service = DeploymentService(reconciler=self.rec, hub=self.rec.hub, registry=FakeRegistry(self.store))  # type: ignore[arg-type]

    def start(self, deployment_id: str, *, owner: str = "default", **fields: object) -> dpb.StartDeploymentResponse:
        req = dpb.StartDeploymentRequest(deployment_id=deployment_id, wait_for=dpb.WAIT_FOR_STARTING, **fields)  # type: ignore[arg-type]
        if not req.model_id and not req.variants and "model_id" not in fields:
            req.model_id = "m"
        return asyncio.run(self.service.start(req, owner=owner))

    def update(self, deployment_id: str, paths: list[str], *, dry_run: bool = False, **spec: object) -> dpb.UpdateDeploymentResponse:
        req = dpb.UpdateDeploymentRequest(deployment_id=deployment_id, spec=dpb.StartDeploymentRequest(**spec),  # type: ignore[arg-type]
                                          update_mask=field_mask_pb2.FieldMask(paths=paths), dry_run=dry_run)
        return asyncio.run(self.service.update(req))

    def stop(self, deployment_id: str) -> None:
        asyncio.run(self.service.stop(dpb.StopDeploymentRequest(deployment_id=deployment_id)))

    def allocs(self, deployment_id: str, *, desired: int | None = RUNNING) -> list[records_pb2.AllocationRecord]:
        return [a for a in self.store.list_allocations(deployment_id=deployment_id) if desired is None or a.desired == desired]

    def report(self, node_id: str, states: dict[str, int] | None = None, *, default: int | None = None) -> None:
        """The agent on node_id applied the newest generation and reports its allocations."""
        node = self.store.get_node(node_id)
        reports = []
        for a in self.store.list_allocations(node_id=node_id):
            state = (states or {}).get(a.allocation_id, default)
            if a.desired == STOPPED and state is None:
                continue  # stopped: absent from the report
            if state is None:
                continue
            reports.append(agent_pb2.AllocationReport(allocation_id=a.allocation_id, deployment_id=a.deployment_id,
                                                      routing_state=state, worker_address=f"{node_id}:{a.allocation_id}",
                                                      reason="load error: boom" if state == S.ROUTING_STATE_FAILED else ""))
        self.rec.agents.observe(node_id, reports, applied_generation=node.generation)

    def all_started(self, *nodes: str) -> None:
        for node_id in nodes:
            self.report(node_id, {a.allocation_id: STARTED for a in self.store.list_allocations(node_id=node_id) if a.desired == RUNNING})

    def status(self, deployment_id: str) -> int:
        return self.store.get_deployment(deployment_id).status

    def events(self, deployment_id: str) -> list[dpb.DeploymentEvent]:
        return self.rec.events.since(deployment_id)

    def transitions(self, deployment_id: str) -> list[tuple[int, int]]:
        return [(e.from_status, e.status) for e in self.events(deployment_id) if e.kind == dpb.EVENT_KIND_STATUS]


# ---- rolling updates ------------------------------------------------------------------------
def test_a_changed_worker_setting_starts_a_new_allocation_before_the_old_one_stops() -> None:
    w = World()
    w.join("a")
    w.start("d", model_version=1, instances=1)
    w.all_started("a")
    (old,) = w.allocs("d")
    w.update("d", ["queue_capacity"], queue_capacity=64)
    new = [a for a in w.allocs("d") if a.allocation_id != old.allocation_id]
    assert len(new) == 1 and new[0].spec.queue_capacity == 64 and new[0].node_id == "a"
    assert w.store.get_allocation(old.allocation_id).desired == RUNNING  # still serving
    assert [r.allocation_id for r in w.rec.route_table.by_deployment["d"]] == [old.allocation_id]
    assert "0 of 1 new allocations started" in w.service.get("d").rollout
    assert w.status("d") == D.DEPLOYMENT_STATUS_DEPLOYING and "rolling update" in w.store.get_deployment("d").status_reason
    w.report("a", {old.allocation_id: STARTED, new[0].allocation_id: STARTED})
    stopped = w.store.get_allocation(old.allocation_id)
    assert stopped.desired == STOPPED and stopped.routing_state == S.ROUTING_STATE_STOPPING
    assert "rolling update" in stopped.reason
    assert [r.allocation_id for r in w.rec.route_table.by_deployment["d"]] == [new[0].allocation_id]
    assert w.status("d") == D.DEPLOYMENT_STATUS_DEPLOYING  # until the old one is gone
    w.report("a", {new[0].allocation_id: STARTED})
    assert w.store.get_allocation(old.allocation_id) is None
    assert w.service.get("d").rollout == "" and w.status("d") == D.DEPLOYMENT_STATUS_RUNNING
    seq = {(e.allocation_id, e.routing_state): e.seq for e in w.events("d") if e.kind == dpb.EVENT_KIND_ROUTING}
    assert seq[(new[0].allocation_id, STARTED)] < seq[(old.allocation_id, S.ROUTING_STATE_STOPPING)] < seq[(old.allocation_id, S.ROUTING_STATE_STOPPED)]


def test_without_room_to_surge_an_update_waits_naming_the_shortfall() -> None:
    w = World()
    w.join("a", cpus=1)
    w.start("d", model_version=1)
    w.all_started("a")
    (old,) = w.allocs("d")
    w.update("d", ["queue_capacity"], queue_capacity=64)
    assert w.store.get_allocation(old.allocation_id).desired == RUNNING and len(w.allocs("d", desired=None)) == 1
    assert "waiting for room: no node can start a new allocation (needs 1 cpu" in w.service.get("d").rollout
    assert [r.node_id for r in w.rec.route_table.by_deployment["d"]] == ["a"]  # still serving
    w.update("d", ["max_unavailable"], max_unavailable=1)  # the operator allows the in-place step
    assert w.store.get_allocation(old.allocation_id).desired == STOPPED


def test_with_max_unavailable_1_old_workers_are_replaced_one_at_a_time() -> None:
    w = World()
    w.join("a", cpus=1)
    w.join("b", cpus=1)
    w.start("d", model_version=1, max_unavailable=1)  # every node; each is full with it
    w.all_started("a", "b")
    old = {a.node_id: a.allocation_id for a in w.allocs("d")}
    w.update("d", ["queue_capacity"], queue_capacity=64)
    assert w.store.get_allocation(old["a"]).desired == STOPPED  # the one in-place step ...
    assert w.store.get_allocation(old["b"]).desired == RUNNING  # ... while b keeps serving
    assert [r.node_id for r in w.rec.route_table.by_deployment["d"]] == ["b"]
    w.report("a")  # a's old worker is gone: a new one starts there
    (new_a,) = [a for a in w.allocs("d") if a.node_id == "a"]
    assert new_a.spec.queue_capacity == 64 and w.service.get("d").rollout
    w.report("a", {new_a.allocation_id: STARTED})
    assert w.store.get_allocation(old["b"]).desired == STOPPED
    assert w.service.get("d").rollout  # not done until b has a new worker too
    w.report("b")
    w.all_started("b")
    assert w.service.get("d").rollout == "" and w.status("d") == D.DEPLOYMENT_STATUS_RUNNING
    assert all(a.spec.queue_capacity == 64 for a in w.allocs("d", desired=None)) and len(w.allocs("d")) == 2
    assert D.DEPLOYMENT_STATUS_CONCERNING not in {new for _, new in w.transitions("d")}


def test_a_removed_variant_keeps_serving_until_the_others_have_started() -> None:
    w = World()
    w.join("a")
    w.start("d", variants=[dpb.VariantSpec(model_id="m", model_version=1, weight=100, instances=1)])
    w.all_started("a")
    (v1,) = w.allocs("d")
    w.update("d", ["variants"], variants=[dpb.VariantSpec(model_id="m", model_version=2, weight=100, instances=1)])
    view = w.service.get("d")
    assert [a.variant for a in view.allocations] == ["m-v2"] and [a.variant for a in view.retiring] == ["m-v1"]
    assert w.store.get_allocation(v1.allocation_id).desired == RUNNING
    assert {r.variant for r in w.rec.route_table.by_deployment["d"]} == {"m-v1"}  # the gateway keeps sending to v1
    w.all_started("a")
    assert w.store.get_allocation(v1.allocation_id).desired == STOPPED
    assert {r.variant for r in w.rec.route_table.by_deployment["d"]} == {"m-v2"}
    w.all_started("a")
    assert not w.service.get("d").retiring


def test_weight_only_update_touches_no_allocation() -> None:
    w = World()
    w.join("a")
    w.start("d", variants=[dpb.VariantSpec(model_id="m", model_version=1, weight=100), dpb.VariantSpec(model_id="m", model_version=2, weight=0)])
    w.all_started("a")
    before = {a.allocation_id for a in w.allocs("d")}
    generation = w.store.get_node("a").generation
    w.update("d", ["variants"], variants=[dpb.VariantSpec(model_id="m", model_version=1, weight=10), dpb.VariantSpec(model_id="m", model_version=2, weight=90)])
    assert {a.allocation_id for a in w.allocs("d")} == before
    assert w.store.get_node("a").generation == generation  # nothing pushed
    assert [v.weight for v in w.store.get_deployment("d").spec.variants] == [10, 90]
    # an identical update changes nothing, not even the revision
    revision = w.store.get_deployment("d").revision
    w.update("d", ["variants"], variants=[dpb.VariantSpec(model_id="m", model_version=1, weight=10), dpb.VariantSpec(model_id="m", model_version=2, weight=90)])
    assert w.store.get_deployment("d").revision == revision


# ---- dry runs, quota, restart -----------------------------------------------------------------------
def test_dry_runs_change_nothing() -> None:
    w = World()
    w.join("a")
    w.join("b", cpus=1)
    resp = w.start("d", model_version=1, inference_threads=2, dry_run=True)
    assert resp.dry_run and list(resp.allocation.routing_table) == ["a"]
    assert resp.allocation.routing_table["a"].reason == "would start here"
    assert not resp.allocation.not_chosen  # the dry run counts nodes by reason
    [why] = resp.allocation.not_chosen_summary
    assert (why.reason, why.count, list(why.example_nodes)) == ("needs 2 cpus, 1 of 1 free", 1, ["b"])
    assert w.store.get_deployment("d") is None and not w.store.list_allocations() and w.rec.events.since("d") == []
    w.start("d", model_version=1)
    w.all_started("a", "b")
    before = (w.store.get_deployment("d"), w.store.list_allocations(), w.rec.events.last_seq("d"))
    plan = w.update("d", ["model_threads"], model_threads=2, dry_run=True).deployment
    table = plan.allocations[0].routing_table
    assert table["a"].allocation_id == "(new)" and table["b"].reason.startswith("would stop")
    assert (w.store.get_deployment("d"), w.store.list_allocations(), w.rec.events.last_seq("d")) == before


def test_quota_of_20_deployments_per_owner_names_the_quota() -> None:
    w = World()
    w.join("a", cpus=1000)
    for i in range(20):
        w.start(f"d{i}", owner="alice")
    with pytest.raises(errors.ResourceExhausted) as err:
        w.start("d20", owner="alice")
    assert "quota" in err.value.message and "20" in err.value.message and "alice" in err.value.message
    w.start("b0", owner="bob")  # per owner
    w.stop("d0")
    with pytest.raises(errors.ResourceExhausted):  # stopped deployments count: they can be restarted
        w.start("d20", owner="alice")
    w.start("d0", model_id="", owner="alice")  # restarting one's own never exceeds the quota


def test_restart_keeps_the_spec_and_refuses_changes() -> None:
    w = World()
    w.join("a")
    w.start("d", model_version=1, model_threads=2, instances=1)
    w.stop("d")
    w.report("a")
    assert w.status("d") == D.DEPLOYMENT_STATUS_STOPPED
    with pytest.raises(errors.InvalidArgument, match="give only deployment_id"):
        w.start("d", model_id="", queue_capacity=5)
    resp = w.start("d", model_id="")
    assert resp.deployment.variants[0].model_threads == 2 and resp.deployment.revision == 3
    with pytest.raises(errors.AlreadyExists):
        w.start("d", model_id="")
    with pytest.raises(errors.NotFound):
        w.start("nope", model_id="")



def test_a_dry_run_restart_plans_against_the_stopped_deployments_draining_workers() -> None:
    """Restarting while the old worker still drains: the preview waits for it, as the real restart does."""
    w = World()
    w.join("a")
    w.start("d", model_version=1, inference_threads=4, instances=1)
    w.all_started("a")
    w.stop("d")  # the agent has not confirmed yet: the old worker still holds node a's 4 cpus
    plan = w.start("d", model_id="", dry_run=True).deployment
    table = dict(plan.allocations[0].routing_table)
    assert list(table) == ["a"] and table["a"].routing_state == S.ROUTING_STATE_STOPPING, table
    w.start("d", model_id="")
    assert not w.allocs("d"), "the real restart waits for the drain too"

# ---- auto stop ----------------------------------------------------------------------------------
def test_auto_stop_when_the_wall_clock_passes_and_restart_counts_again() -> None:
    w = World()
    w.join("a")
    start = dpb.StartDeploymentRequest(deployment_id="d", model_id="m", wait_for=dpb.WAIT_FOR_STARTING)
    start.auto_stop.FromSeconds(3600)
    asyncio.run(w.service.start(start, owner="x"))
    w.all_started("a")
    assert w.service.get("d").auto_stop_at.seconds == int(w.wall.now) + 3600
    w.wall.now += 3599
    w.rec.reconcile()
    assert w.store.get_deployment("d").desired == RUNNING
    w.wall.now += 1
    w.rec.reconcile()
    rec = w.store.get_deployment("d")
    assert rec.desired == STOPPED and rec.stop_reason == "auto stop"
    w.report("a")
    assert w.status("d") == D.DEPLOYMENT_STATUS_STOPPED and w.store.get_deployment("d").status_reason == "auto stop"
    assert any(e.kind == dpb.EVENT_KIND_SPEC and e.reason.startswith("auto stop") for e in w.events("d"))
    again = w.start("d", model_id="")
    assert again.deployment.auto_stop_at.seconds == int(w.wall.now) + 3600


# ---- events ---------------------------------------------------------------------------------------
def test_the_event_log_is_bounded_and_seq_keeps_growing() -> None:
    w = World()
    for i in range(MAX_EVENTS_PER_DEPLOYMENT + 10):
        w.rec.events.spec("d", revision=i, reason=f"e{i}")
    kept = w.rec.events.since("d")
    assert len(kept) == MAX_EVENTS_PER_DEPLOYMENT
    assert kept[0].seq == 11 and kept[-1].seq == MAX_EVENTS_PER_DEPLOYMENT + 10
    assert [e.seq for e in w.rec.events.since("d", after_seq=kept[-2].seq)] == [kept[-1].seq]
    assert all(e.time.seconds == int(w.wall.now) for e in kept)


# ---- every status transition ----------------------------------------------------------------------
def _scenario_start_run_update_stop_restart(w: World) -> str:
    w.join("a")
    w.start("d", model_version=1, instances=1)  # UNSPECIFIED -> DEPLOYING
    w.all_started("a")  # -> RUNNING
    w.update("d", ["variants"], variants=[dpb.VariantSpec(model_id="m", model_version=1, weight=50),
                                          dpb.VariantSpec(model_id="m", model_version=2, weight=50, instances=1)])  # -> DEPLOYING
    w.all_started("a")  # -> RUNNING
    w.stop("d")  # -> STOPPING
    w.report("a")  # -> STOPPED
    w.start("d", model_id="")  # STOPPED -> DEPLOYING
    return "d"


def _scenario_failures(w: World) -> str:
    w.join("a")
    w.join("b")
    w.start("d", model_version=1)
    ids = {a.node_id: a.allocation_id for a in w.allocs("d")}
    w.report("a", {ids["a"]: STARTED})
    w.report("b", {ids["b"]: S.ROUTING_STATE_FAILED})  # DEPLOYING -> CONCERNING
    w.report("a", {ids["a"]: S.ROUTING_STATE_FAILED})  # CONCERNING -> ABNORMAL
    w.report("a", {ids["a"]: S.ROUTING_STATE_STARTING})  # the agent restarts it: still ABNORMAL
    w.report("a", {ids["a"]: STARTED})  # ABNORMAL -> CONCERNING (b still failed)
    w.report("b", {ids["b"]: STARTED})  # CONCERNING -> RUNNING
    w.report("a", {ids["a"]: S.ROUTING_STATE_FAILED})  # RUNNING -> CONCERNING
    w.report("a", {ids["a"]: STARTED})  # -> RUNNING
    w.report("a", {ids["a"]: S.ROUTING_STATE_FAILED})
    w.report("b", {ids["b"]: S.ROUTING_STATE_FAILED})  # RUNNING -> CONCERNING -> ABNORMAL
    w.report("a", {ids["a"]: S.ROUTING_STATE_STARTING})
    w.report("b", {ids["b"]: S.ROUTING_STATE_STARTING})  # both restarting: still ABNORMAL
    w.report("a", {ids["a"]: STARTED})  # ABNORMAL -> DEPLOYING (b is still starting)
    w.report("b", {ids["b"]: STARTED})  # -> RUNNING
    w.report("a", {ids["a"]: S.ROUTING_STATE_FAILED})
    w.report("b", {ids["b"]: S.ROUTING_STATE_FAILED})
    w.stop("d")  # ABNORMAL -> STOPPING until the agent confirms
    w.report("a")
    w.report("b")  # -> STOPPED
    return "d"


def _scenario_never_starts(w: World) -> str:
    w.join("a")
    w.start("d", model_version=1)
    w.report("a", default=S.ROUTING_STATE_FAILED)  # DEPLOYING -> FAILED
    w.join("b")  # FAILED -> DEPLOYING: a new target
    w.report("b", default=STARTED)  # -> CONCERNING: a failed
    w.stop("d")  # CONCERNING -> STOPPING
    w.report("b")  # -> STOPPED
    return "d"


def _scenario_waits_then_stops(w: World) -> str:
    w.join("a", cpus=1)
    w.join("b", cpus=1)
    w.store.put_node(records_pb2.NodeRecord(info=agent_pb2.NodeInfo(node_id="c", capacity=common_pb2.NodeCapacity(cpus=8, memory_bytes=8 << 30)), schedulable=False))
    w.rec.reconcile()  # a node written to the store outside registration: the next full tick sees it
    w.start("d", model_version=1, inference_threads=4, instances=1)  # waits for capacity (c is cordoned)
    w.stop("d")  # DEPLOYING -> STOPPED (nothing ran)
    return "d"


def _scenario_running_to_abnormal_and_stopping(w: World) -> str:
    w.join("a")
    w.start("d", model_version=1, instances=1)
    w.all_started("a")
    w.report("a", default=S.ROUTING_STATE_FAILED)  # RUNNING -> ABNORMAL (one target)
    w.report("a", default=STARTED)  # ABNORMAL -> RUNNING
    w.report("a", default=S.ROUTING_STATE_FAILED)
    w.update("d", ["variants"], variants=[dpb.VariantSpec(model_id="m", model_version=2, weight=100, instances=1)])  # ABNORMAL -> DEPLOYING
    new = [a for a in w.allocs("d") if a.variant == "m-v2"]
    w.report("a", {new[0].allocation_id: STARTED})  # -> RUNNING
    w.stop("d")  # RUNNING -> STOPPING
    return "d"


SCENARIOS = [_scenario_start_run_update_stop_restart, _scenario_failures, _scenario_never_starts, _scenario_waits_then_stops,
             _scenario_running_to_abnormal_and_stopping]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("_scenario_"))
def test_every_recorded_status_change_is_in_the_table(scenario: object) -> None:
    w = World()
    deployment_id = scenario(w)  # type: ignore[operator]
    observed = w.transitions(deployment_id)
    assert observed, "the scenario changed no status"
    assert set(observed) <= STATUS_TRANSITIONS, set(observed) - STATUS_TRANSITIONS
    # every status event says why, except the settled ones
    for e in w.events(deployment_id):
        if e.kind == dpb.EVENT_KIND_STATUS and e.status not in (D.DEPLOYMENT_STATUS_RUNNING,):
            assert e.reason, e


def test_the_scenarios_cover_the_status_transitions() -> None:
    covered: set[tuple[int, int]] = set()
    for scenario in SCENARIOS:
        w = World()
        covered |= set(w.transitions(scenario(w)))
    must = {
        (D.DEPLOYMENT_STATUS_UNSPECIFIED, D.DEPLOYMENT_STATUS_DEPLOYING),
        (D.DEPLOYMENT_STATUS_DEPLOYING, D.DEPLOYMENT_STATUS_RUNNING),
        (D.DEPLOYMENT_STATUS_DEPLOYING, D.DEPLOYMENT_STATUS_CONCERNING),
        (D.DEPLOYMENT_STATUS_DEPLOYING, D.DEPLOYMENT_STATUS_FAILED),
        (D.DEPLOYMENT_STATUS_DEPLOYING, D.DEPLOYMENT_STATUS_STOPPED),
        (D.DEPLOYMENT_STATUS_RUNNING, D.DEPLOYMENT_STATUS_DEPLOYING),
        (D.DEPLOYMENT_STATUS_RUNNING, D.DEPLOYMENT_STATUS_CONCERNING),
        (D.DEPLOYMENT_STATUS_RUNNING, D.DEPLOYMENT_STATUS_ABNORMAL),
        (D.DEPLOYMENT_STATUS_RUNNING, D.DEPLOYMENT_STATUS_STOPPING),
        (D.DEPLOYMENT_STATUS_CONCERNING, D.DEPLOYMENT_STATUS_RUNNING),
        (D.DEPLOYMENT_STATUS_CONCERNING, D.DEPLOYMENT_STATUS_ABNORMAL),
        (D.DEPLOYMENT_STATUS_CONCERNING, D.DEPLOYMENT_STATUS_STOPPING),
        (D.DEPLOYMENT_STATUS_ABNORMAL, D.DEPLOYMENT_STATUS_RUNNING),
        (D.DEPLOYMENT_STATUS_ABNORMAL, D.DEPLOYMENT_STATUS_CONCERNING),
        (D.DEPLOYMENT_STATUS_ABNORMAL, D.DEPLOYMENT_STATUS_DEPLOYING),
        (D.DEPLOYMENT_STATUS_ABNORMAL, D.DEPLOYMENT_STATUS_STOPPING),
        (D.DEPLOYMENT_STATUS_FAILED, D.DEPLOYMENT_STATUS_DEPLOYING),
        (D.DEPLOYMENT_STATUS_STOPPING, D.DEPLOYMENT_STATUS_STOPPED),
        (D.DEPLOYMENT_STATUS_STOPPED, D.DEPLOYMENT_STATUS_DEPLOYING),
    }
    assert must <= covered, sorted(must - covered)


def test_a_node_lost_while_its_stream_stays_open_is_made_to_register_again() -> None:
    """A busy control plane can miss the SUSPECT step (its sweep is late): the
    node goes READY -> LOST with its stream open. The stream is closed, so the
    agent registers again and the node is READY, instead of LOST for good."""
    w = World()
    w.join("a")
    session = w.sessions["a"]
    w.clock.now += 5  # no sweep ran for 5 s
    assert w.fleet.sweep() == ["a"] and w.fleet.state("a").value == "LOST"
    assert session.closed and w.fleet.session("a") is None  # type: ignore[attr-defined]
    w.fleet.touch("a")  # a late heartbeat on the old stream does not revive it
    assert w.fleet.state("a").value == "LOST"
    w.join("a")
    assert w.fleet.state("a").value == "READY"
