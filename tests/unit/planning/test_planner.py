"""Unit tests of control_plane.planning.planner with hand-written tables (a
drained node, a lost node, no capacity, a rolling update with and without
spare room), and a property test that holds the reconciler and the dry run
(control_plane.deployments.preview) to the same answer on random fleets:
what the preview promises is what one reconcile tick then writes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.deployments import preview
from control_plane.fleet.liveness import Fleet
from control_plane.planning import planner, reasons
from control_plane.planning.rollout import allocation_spec
from control_plane.planning.scheduler import NodeView
from control_plane.reconcile.hub import ChangeHub
from control_plane.reconcile.reconciler import Reconciler
from control_plane.store.memory import MemoryStore
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, models_pb2
from modelfleet.v1 import common_pb2 as S
from modelfleet.v1 import deployments_pb2 as dpb

RUNNING = records_pb2.DESIRED_STATE_RUNNING
STOPPED = records_pb2.DESIRED_STATE_STOPPED
GIB = 1 << 30
MODELS = {
    ("m", v): models_pb2.Model(model_id="m", version=v, format=S.MODEL_FORMAT_ONNX, model_bytes=1000, sha256=f"{v:02d}" * 32)
    for v in (1, 2)
}


def node(node_id: str, *, cpus: float = 4, used: float = 0, ready: bool = True, schedulable: bool = True) -> NodeView:
    return NodeView(node_id=node_id, cpus=cpus, memory_bytes=8 * GIB, gpus=0, used_cpus=used, ready=ready, schedulable=schedulable)


def variant(*, name: str = "v", version: int = 1, threads: int = 1, instances: int = 0, pool: str = "") -> dpb.VariantSpec:
    return dpb.VariantSpec(name=name, model_id="m", model_version=version, weight=100, inference_threads=threads,
                           model_threads=1, instances=instances, resources=S.Resources(pool=pool))


def record(*variants: dpb.VariantSpec, desired: int = RUNNING) -> records_pb2.DeploymentRecord:
    return records_pb2.DeploymentRecord(deployment_id="d", spec=dpb.StartDeploymentRequest(deployment_id="d", variants=variants),
                                        desired=desired)  # type: ignore[arg-type]


def alloc(aid: str, node_id: str, v: dpb.VariantSpec, *, state: int = S.ROUTING_STATE_STARTED, desired: int = RUNNING,
          threads: int | None = None) -> records_pb2.AllocationRecord:
    spec_of = dpb.VariantSpec()
    spec_of.CopyFrom(v)
    if threads is not None:
        spec_of.inference_threads = threads
    spec = allocation_spec(deployment_id="d", variant=spec_of, model=MODELS[(v.model_id, v.model_version)], allocation_id=aid)
    return records_pb2.AllocationRecord(allocation_id=aid, deployment_id="d", variant=v.name, node_id=node_id,
                                        desired=desired, routing_state=state, spec=spec)  # type: ignore[arg-type]


def plan(rec: records_pb2.DeploymentRecord, allocs: list[records_pb2.AllocationRecord], nodes: list[NodeView], *,
         cordoned: frozenset[str] = frozenset(), lost: frozenset[str] = frozenset()) -> planner.Plan:
    return planner.plan_deployment(record=rec, allocations=allocs, models=MODELS, node_views={n.node_id: n for n in nodes},
                                   cordoned=cordoned, lost_nodes=lost)


# ---- tables --------------------------------------------------------------------------------------
def test_a_new_deployment_starts_on_every_eligible_node_and_says_why_not_elsewhere() -> None:
    p = plan(record(variant(threads=2)), [], [node("a"), node("b", cpus=1), node("c", schedulable=False)])
    assert [(s.node_id, s.variant) for s in p.starts()] == [("a", "v")]
    assert p.starts()[0].spec.allocation_id == "" and not p.stops() and not p.fails()
    (v,) = p.variants
    assert v.placement is not None and v.placement.not_chosen == {"b": "needs 2 cpus, 1 of 1 free", "c": "node is cordoned"}
    assert v.waiting and not v.quiet and p.rollout == ""


def test_no_capacity_starts_nothing_and_names_the_shortfall() -> None:
    p = plan(record(variant(threads=8, instances=1)), [], [node("a"), node("b", cpus=2)])
    (v,) = p.variants
    assert not p.starts() and v.placement is not None and v.placement.targets == ()
    assert v.placement.shortfall == "no node can fit 8 cpus (largest has 4)"
    assert v.waiting and v.quiet  # nothing to do, planned again when capacity changes


def test_usage_of_one_variant_counts_for_the_next() -> None:
    p = plan(record(variant(name="x", threads=3, instances=1), variant(name="y", threads=3, instances=1)), [], [node("a"), node("b")])
    assert sorted(s.node_id for s in p.starts()) == ["a", "b"]


def test_a_drained_node_is_replaced_make_before_break() -> None:
    v = variant(instances=1)
    allocs = [alloc("old", "a", v)]
    nodes = [node("a", used=1, schedulable=False), node("b")]
    p = plan(record(v), allocs, nodes, cordoned=frozenset({"a"}))
    assert [s.node_id for s in p.starts()] == ["b"] and not p.stops()
    assert p.variants[0].replacing == ("old",) and "1 old ones still serving" in p.rollout
    # once the replacement started, the drained one stops, with the drain as its reason
    allocs.append(alloc("new", "b", v))
    p = plan(record(v), allocs, [node("a", used=1, schedulable=False), node("b", used=1)], cordoned=frozenset({"a"}))
    assert [(s.allocation_id, s.reason, s.node_lost) for s in p.stops()] == [("old", planner.DRAINED, False)]


def test_a_lost_node_fails_its_allocation_and_a_fixed_variant_moves() -> None:
    v = variant(instances=1)
    allocs = [alloc("x", "a", v)]
    p = plan(record(v), allocs, [node("a", used=1, ready=False), node("b")], lost=frozenset({"a"}))
    assert [s.node_id for s in p.starts()] == ["b"]
    assert p.fails() == [planner.Fail(allocation_id="x", node_id="a", route_failed=True, leave=True)]
    assert not p.variants[0].quiet
    # an all-nodes variant keeps it wanted (the node gets it back), only the route fails
    every = variant()
    p = plan(record(every), [alloc("x", "a", every)], [node("a", used=1, ready=False)], lost=frozenset({"a"}))
    assert p.fails() == [planner.Fail(allocation_id="x", node_id="a", route_failed=True, leave=False)]
    # already failed "node lost": nothing left to do
    failed = alloc("x", "a", every, state=S.ROUTING_STATE_FAILED)
    failed.reason = planner.NODE_LOST
    assert plan(record(every), [failed], [node("a", ready=False)], lost=frozenset({"a"})).fails() == []


def test_a_rolling_update_with_spare_room_surges_then_stops_the_old_one() -> None:
    v = variant(threads=2, instances=1)
    old = alloc("old", "a", v, threads=1)
    p = plan(record(v), [old], [node("a", used=1)])
    assert [s.node_id for s in p.starts()] == ["a"] and not p.stops()  # beside the old one: 1 + 2 of 4 cpus
    assert p.variants[0].replacing == ("old",)
    p = plan(record(v), [old, alloc("new", "a", v)], [node("a", used=3)])
    assert [(s.allocation_id, s.reason) for s in p.stops()] == [("old", "replaced by a new allocation on this node (rolling update)")]
    assert p.rollout == "variant 'v': 1 of 1 new allocations started, 0 old ones still serving"


def test_a_rolling_update_without_spare_room_waits_unless_max_unavailable_allows() -> None:
    v = variant(threads=4, instances=1)
    old = alloc("old", "a", v, threads=3)
    p = plan(record(v), [old], [node("a", used=3)])
    assert not p.starts() and not p.stops() and "waiting for room" in p.rollout and "--max-unavailable 1" in p.rollout
    rec = record(v)
    rec.spec.max_unavailable = 1
    p = plan(rec, [old], [node("a", used=3)])
    assert not p.starts()
    assert [s.reason for s in p.stops()] == ["replaced in place: no node has room to start a new allocation beside it (rolling update)"]
    # while it drains, nothing else happens; its room is then used
    old.desired, old.routing_state = STOPPED, S.ROUTING_STATE_STOPPING
    p = plan(rec, [old], [node("a", used=3)])
    assert not p.starts() and not p.stops() and "draining" in p.rollout


def test_removed_variants_retire_once_the_others_serve() -> None:
    kept, gone = variant(name="new"), variant(name="gone")
    allocs = [alloc("g", "a", gone), alloc("n", "a", kept, state=S.ROUTING_STATE_STARTING)]
    p = plan(record(kept), allocs, [node("a", used=2)])
    assert p.retire == () and p.retiring == ("g",) and "keep serving" in p.rollout
    allocs[1].routing_state = S.ROUTING_STATE_STARTED
    p = plan(record(kept), allocs, [node("a", used=2)])
    assert [(s.allocation_id, s.reason) for s in p.retire] == [("g", planner.RETIRED)] and p.retiring == ()


def test_a_stopped_deployment_stops_everything_and_removes_on_lost_nodes() -> None:
    v = variant()
    allocs = [alloc("x", "a", v), alloc("y", "b", v, desired=STOPPED, state=S.ROUTING_STATE_STOPPING), alloc("z", "c", v, desired=STOPPED)]
    p = plan(record(v, desired=STOPPED), allocs, [node("a"), node("b"), node("c", ready=False)], lost=frozenset({"c"}))
    assert p.variants == () and [(s.allocation_id, s.node_lost) for s in p.retire] == [("x", False), ("z", True)]


def test_a_gone_model_plans_nothing() -> None:
    p = plan(record(variant(version=3)), [], [node("a")])
    (v,) = p.variants
    assert v.decision is None and v.error == "model m v3 is gone" and not p.starts()


# ---- the reconciler and the dry run agree --------------------------------------------------------
ROUTES = [S.ROUTING_STATE_STARTING, S.ROUTING_STATE_STARTED, S.ROUTING_STATE_FAILED, S.ROUTING_STATE_STOPPING, S.ROUTING_STATE_STOPPED]
nodes_st = st.lists(
    st.tuples(st.sampled_from([1.0, 2.0, 4.0]), st.sampled_from(["", "blue", "green"]),
              st.sampled_from(["ready", "suspect", "lost"]), st.booleans()),
    min_size=1, max_size=5,
)
variants_st = st.lists(
    st.tuples(st.sampled_from([0, 1, 2, 3]), st.sampled_from([1, 2]), st.sampled_from(["", "blue"]), st.sampled_from([1, 2])),
    min_size=1, max_size=2,
)
# per (node, variant slot): an existing allocation (routing state, desired, stale) or none
allocs_st = st.lists(st.one_of(st.none(), st.tuples(st.sampled_from(ROUTES), st.booleans(), st.booleans())), min_size=30, max_size=30)


class _Fleet:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.fleet = Fleet(heartbeat_interval=0.2, node_timeout=1.0, clock=lambda: 1000.0)
        self.rec = Reconciler(store=self.store, fleet=self.fleet, hub=ChangeHub(), clock=lambda: 1000.0, wall_clock=lambda: 1.7e9)
        for m in MODELS.values():
            self.store.put_model(m)

    def node(self, node_id: str, *, cpus: float, pool: str, liveness: str, cordoned: bool) -> None:
        info = agent_pb2.NodeInfo(node_id=node_id, capacity=S.NodeCapacity(cpus=cpus, memory_bytes=8 * GIB),
                                  labels={"pool": pool} if pool else {})
        self.store.put_node(records_pb2.NodeRecord(info=info, schedulable=not cordoned))
        if liveness == "ready":
            self.fleet.attach(node_id)
        elif liveness == "suspect":
            self.fleet.recover([node_id])
        # lost: the fleet does not know it


def _outcome(store: MemoryStore, before: set[str]) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str, int]]]:
    """Existing allocations (id -> (desired, routing state)) and new ones (variant, node, routing state)."""
    allocs = store.list_allocations(deployment_id="d")
    old = {a.allocation_id: (a.desired, a.routing_state) for a in allocs if a.allocation_id in before}
    new = sorted((a.variant, a.node_id, a.routing_state) for a in allocs if a.allocation_id not in before)
    return old, new


@settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(nodes=nodes_st, variants=variants_st, allocs=allocs_st, removed=st.booleans(), full=st.booleans())
def test_the_dry_run_promises_what_one_tick_writes(
    nodes: list[tuple[float, str, str, bool]],
    variants: list[tuple[int, int, str, int]],
    allocs: list[tuple[int, bool, bool] | None],
    removed: bool,
    full: bool,
) -> None:
    world = _Fleet()
    node_ids = [f"n{i}" for i in range(len(nodes))]
    for node_id, (cpus, pool, liveness, cordoned) in zip(node_ids, nodes):
        world.node(node_id, cpus=cpus, pool=pool, liveness=liveness, cordoned=cordoned)
    specs = [variant(name=f"v{i}", version=ver, threads=thr, instances=inst, pool=pool) for i, (inst, thr, pool, ver) in enumerate(variants)]
    slots = specs + ([variant(name="removed")] if removed else [])
    slot_iter = iter(allocs)
    for node_id in node_ids:
        for spec in slots:
            drawn = next(slot_iter, None)
            if drawn is None:
                continue
            state, wanted, stale = drawn
            a = alloc(f"{node_id}-{spec.name}", node_id, spec, state=state, desired=RUNNING if wanted else STOPPED,
                      threads=spec.inference_threads + 1 if stale else None)
            world.store.put_allocation(a)
    rec = record(*specs)
    rec.revision = 1
    world.store.put_deployment(rec)
    current = world.store.list_allocations(deployment_id="d")
    before = {a.allocation_id for a in current}

    planned = preview.plan_preview(rec, reconciler=world.rec, current=current)
    shown = preview.preview(rec, reconciler=world.rec, current=current)
    world.rec.reconcile(None if full else ["d"])

    old, new = _outcome(world.store, before)
    promised_new = sorted((a.variant, a.node_id, a.routing_state) for a in planned.allocations if a.allocation_id == preview.NEW_ID)
    assert new == promised_new
    later = {*planned.plan.retiring, *(i for v in planned.plan.variants for i in v.replacing)}
    removed_now = {s.allocation_id for s in planned.plan.stops() if s.node_lost}
    for a in planned.allocations:
        if a.allocation_id == preview.NEW_ID:
            continue
        if a.allocation_id in removed_now:
            assert a.allocation_id not in old  # the tick removes it: nobody is left to confirm the stop
        elif a.allocation_id in later:
            assert old[a.allocation_id][0] == RUNNING  # keeps serving for now, stopped by a later tick
        else:
            assert old[a.allocation_id] == (a.desired, a.routing_state), a.allocation_id
    # the reconciler keeps its placements with their reasons counted (compact), the preview whole
    assert {k[1]: p for k, p in world.rec.placements.items() if k[0] == "d"} == {v: p.compact() for v, p in planned.placements.items()}
    assert world.rec.rollouts.get("d", "") == shown.rollout
    for view in shown.allocations:
        placement = world.rec.placements.get(("d", view.variant))
        assert view.target_nodes == (len(placement.targets) if placement else 0)
        promised = planned.placements.get(view.variant)
        elsewhere = {n: r for n, r in (promised.not_chosen.items() if promised else ()) if n not in view.routing_table}
        assert not view.not_chosen and [(g.reason, g.count) for g in view.not_chosen_summary] == [
            (g.reason, g.count) for g in reasons.summarise(elsewhere)
        ]


@pytest.mark.parametrize("full", [False, True])
def test_the_dry_run_counts_draining_allocations_like_the_tick(full: bool) -> None:
    """A stale allocation still draining: the tick waits for it; so does the preview."""
    world = _Fleet()
    world.node("a", cpus=4, pool="", liveness="ready", cordoned=False)
    v = variant(threads=4, instances=1)
    world.store.put_allocation(alloc("old", "a", v, threads=3, desired=STOPPED, state=S.ROUTING_STATE_STOPPING))
    rec = record(v)
    world.store.put_deployment(rec)
    current = world.store.list_allocations(deployment_id="d")
    shown = preview.preview(rec, reconciler=world.rec, current=current)
    world.rec.reconcile(None if full else ["d"])
    assert shown.allocations[0].routing_table["a"].allocation_id != preview.NEW_ID
    assert [a.allocation_id for a in world.store.list_allocations(deployment_id="d")] == ["old"]
    assert "draining" in shown.rollout and world.rec.rollouts["d"] == shown.rollout
