"""Unit tests of control_plane.planning.rollout: the make-before-break rules, table by
table, with node views and allocation members built by hand."""

from __future__ import annotations

import pytest

from control_plane.planning.rollout import Member, Progress, allocation_spec, is_fresh, plan_variant, ready_to_retire
from control_plane.planning.scheduler import Demand, NodeView
from modelfleet.v1 import common_pb2, deployments_pb2, models_pb2

STARTING = common_pb2.ROUTING_STATE_STARTING
STARTED = common_pb2.ROUTING_STATE_STARTED
FAILED = common_pb2.ROUTING_STATE_FAILED
GIB = 1 << 30


def node(node_id: str, *, cpus: float = 4, used: float = 0, pool: str | None = None, ready: bool = True) -> NodeView:
    return NodeView(node_id=node_id, cpus=cpus, memory_bytes=8 * GIB, gpus=0, used_cpus=used,
                    labels={} if pool is None else {"pool": pool}, ready=ready)


def member(aid: str, node_id: str, state: int = STARTED, *, fresh: bool, cpus: float = 1, lost: bool = False) -> Member:
    return Member(allocation_id=aid, node_id=node_id, routing_state=state, fresh=fresh, lost=lost, used_cpus=cpus, used_memory=GIB)


def demand(cpus: float = 1, *, instances: int = 0, pool: str = "") -> Demand:
    return Demand(cpus=cpus, memory_bytes=GIB, instances=instances, pool=pool)


def test_fresh_only_is_plain_placement() -> None:
    plan = plan_variant(demand(), [node("a", used=1), node("b")], [member("x", "a", fresh=True)], draining=0, name="v")
    assert plan.placement.targets == ("a", "b") and plan.start_on == ("b",)
    assert plan.stop == {} and plan.rollout == ""


def test_new_allocation_starts_beside_the_old_one_and_the_old_one_stops_once_it_started() -> None:
    nodes = [node("a", used=1)]
    old = member("old", "a", fresh=False)
    plan = plan_variant(demand(), nodes, [old], draining=0, name="v")
    assert plan.start_on == ("a",) and plan.stop == {}
    assert "0 of 1 new allocations started, 1 old ones still serving" in plan.rollout
    nodes = [node("a", used=2)]
    plan = plan_variant(demand(), nodes, [old, member("new", "a", STARTING, fresh=True)], draining=0, name="v")
    assert plan.start_on == () and plan.stop == {}  # starting: the old one keeps serving
    plan = plan_variant(demand(), nodes, [old, member("new", "a", STARTED, fresh=True)], draining=0, name="v")
    assert plan.stop == {"old": "replaced by a new allocation on this node (rolling update)"}


def test_old_allocations_elsewhere_stop_once_enough_new_ones_started() -> None:
    nodes = [node("a", used=4, cpus=4), node("b", used=1)]
    members = [member("old", "a", fresh=False, cpus=4), member("new", "b", STARTED, fresh=True)]
    plan = plan_variant(demand(instances=1), nodes, members, draining=0, name="v")
    assert plan.stop == {"old": "replaced by new allocations on other nodes (rolling update)"}


def test_a_failed_new_allocation_keeps_every_old_one_serving() -> None:
    nodes = [node("a", used=2)]
    members = [member("old", "a", fresh=False), member("new", "a", FAILED, fresh=True)]
    plan = plan_variant(demand(), nodes, members, draining=0, name="v")
    assert plan.stop == {} and plan.start_on == ()
    assert "1 old ones still serving" in plan.rollout


def test_without_room_to_surge_the_update_waits_and_names_the_shortfall() -> None:
    # two full nodes: the new spec needs 2 cpus, each node has 2 and the old allocation holds both
    nodes = [node("a", cpus=2, used=2), node("b", cpus=2, used=2)]
    members = [member("old-a", "a", fresh=False, cpus=2), member("old-b", "b", fresh=False, cpus=2)]
    plan = plan_variant(demand(2), nodes, members, draining=0, name="v")
    assert plan.placement.targets == () and plan.stop == {} and plan.start_on == ()  # no capacity taken away
    assert plan.rollout.startswith("variant 'v': waiting for room: no node can start a new allocation (needs 2 cpus")
    assert "beside the 2 old one(s)" in plan.rollout and "--max-unavailable 1" in plan.rollout


def test_with_max_unavailable_old_allocations_are_replaced_in_place_that_many_at_a_time() -> None:
    nodes = [node("a", cpus=2, used=2), node("b", cpus=2, used=2)]
    members = [member("old-a", "a", fresh=False, cpus=2), member("old-b", "b", fresh=False, cpus=2)]
    plan = plan_variant(demand(2), nodes, members, draining=0, name="v", max_unavailable=1)
    assert plan.placement.targets == ()
    assert plan.stop == {"old-a": "replaced in place: no node has room to start a new allocation beside it (rolling update)"}
    assert "waiting for room" in plan.rollout
    assert set(plan_variant(demand(2), nodes, members, draining=0, name="v", max_unavailable=2).stop) == {"old-a", "old-b"}
    # while it drains nothing else stops
    assert plan_variant(demand(2), nodes, members, draining=1, name="v", max_unavailable=1).stop == {}
    # a: the new one started; b is still in the way and goes next, once a is done draining
    nodes = [node("a", cpus=2, used=2), node("b", cpus=2, used=2)]
    members = [member("new-a", "a", STARTED, fresh=True, cpus=2), member("old-b", "b", fresh=False, cpus=2)]
    assert plan_variant(demand(2), nodes, members, draining=1, name="v", max_unavailable=1).stop == {}
    plan = plan_variant(demand(2), nodes, members, draining=0, name="v", max_unavailable=1)
    assert list(plan.stop) == ["old-b"] and "in place" in plan.stop["old-b"]


def test_old_allocations_on_nodes_the_new_spec_cannot_use_stop_together() -> None:
    # the update moved the variant to pool green: blue nodes will never take it
    nodes = [node("a", pool="blue", used=1), node("b", pool="blue", used=1), node("g", pool="green", used=1)]
    members = [member("old-a", "a", fresh=False), member("old-b", "b", fresh=False), member("new-g", "g", STARTED, fresh=True)]
    plan = plan_variant(demand(pool="green"), nodes, members, draining=0, name="v")
    assert set(plan.stop) == {"old-a", "old-b"}
    plan = plan_variant(demand(pool="green"), nodes, members[:2] + [member("new-g", "g", STARTING, fresh=True)], draining=0, name="v")
    assert plan.stop == {}


def test_lost_members_are_left_to_the_reconciler() -> None:
    nodes = [node("a", ready=False), node("b")]
    members = [member("lost", "a", fresh=True, lost=True)]
    plan = plan_variant(demand(instances=1), nodes, members, draining=0, name="v")
    assert plan.start_on == ("b",) and plan.stop == {}


@pytest.mark.parametrize(
    ("progress", "ready"),
    [
        ([Progress(weight=100, started=1, starting=0)], True),
        ([Progress(weight=100, started=1, starting=1)], False),  # still starting: wait
        ([Progress(weight=100, started=0, starting=0)], False),  # failed or unplaced: keep the old one
        ([Progress(weight=100, started=0, starting=0, also_serving=1)], True),  # its own old allocations serve
        ([Progress(weight=50, started=1, starting=0), Progress(weight=50, started=0, starting=1)], False),
        ([Progress(weight=100, started=2, starting=0), Progress(weight=0, started=0, starting=1)], True),  # weight 0 does not count
    ],
)
def test_ready_to_retire(progress: list[Progress], ready: bool) -> None:
    assert ready_to_retire(progress) is ready


def test_freshness_ignores_the_allocation_id_and_sees_every_setting() -> None:
    model = models_pb2.Model(model_id="m", version=1, sha256="ab" * 32, model_bytes=10, format=common_pb2.MODEL_FORMAT_ONNX)
    variant = deployments_pb2.VariantSpec(name="m-v1", model_id="m", model_version=1, inference_threads=1, model_threads=1, queue_capacity=8, env={"A": "1"})
    template = allocation_spec(deployment_id="d", variant=variant, model=model)
    running = allocation_spec(deployment_id="d", variant=variant, model=model, allocation_id="d-1")
    assert is_fresh(running, template)
    for change in ({"queue_capacity": 9}, {"model_threads": 2}, {"env": {"A": "2"}}, {"resources": common_pb2.Resources(pool="p")}):
        other = deployments_pb2.VariantSpec()
        other.CopyFrom(variant)
        for key, value in change.items():
            if key == "env":
                other.env.clear()
                other.env.update(value)  # type: ignore[arg-type]
            elif key == "resources":
                other.resources.CopyFrom(value)  # type: ignore[arg-type]
            else:
                setattr(other, key, value)
        assert not is_fresh(running, allocation_spec(deployment_id="d", variant=other, model=model)), change
