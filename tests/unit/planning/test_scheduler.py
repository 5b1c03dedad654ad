"""Unit tests of control_plane.planning.scheduler: every placement rule, table-driven."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from control_plane.planning.scheduler import Demand, NodeView, Placement, demand_for, estimate_memory, place
from modelfleet.v1 import common_pb2, deployments_pb2

GIB = 1024**3
MIB = 1024**2


def n(
    node_id: str,
    *,
    cpus: float = 8,
    mem: int = 32 * GIB,
    gpus: int = 0,
    pool: str | None = None,
    ready: bool = True,
    schedulable: bool = True,
    used_cpus: float = 0,
    used_mem: int = 0,
    used_gpus: int = 0,
) -> NodeView:
    return NodeView(
        node_id=node_id,
        cpus=cpus,
        memory_bytes=mem,
        gpus=gpus,
        labels={} if pool is None else {"pool": pool},
        ready=ready,
        schedulable=schedulable,
        used_cpus=used_cpus,
        used_memory=used_mem,
        used_gpus=used_gpus,
    )


def d(cpus: float = 1, *, mem: int = GIB, gpus: int = 0, pool: str = "", instances: int = 0) -> Demand:
    return Demand(cpus=cpus, memory_bytes=mem, gpus=gpus, pool=pool, instances=instances)


# ---- demand_for -------------------------------------------------------------------
def variant(
    *, it: int = 1, mt: int = 1, instances: int = 0, cpus: float = 0, mem: int = 0, gpus: int = 0, pool: str = ""
) -> deployments_pb2.VariantSpec:
    return deployments_pb2.VariantSpec(
        name="v",
        model_id="m",
        inference_threads=it,
        model_threads=mt,
        instances=instances,
        resources=common_pb2.Resources(cpus=cpus, memory_bytes=mem, gpus=gpus, pool=pool),
    )


@pytest.mark.parametrize(
    ("spec", "model_bytes", "expected"),
    [
        # cpus = inference_threads x model_threads; memory = 2 x model_bytes + 64 MiB
        (variant(it=2, mt=3), 100 * MIB, Demand(cpus=6, memory_bytes=264 * MIB, gpus=0, pool="", instances=0)),
        # threads left at 0 count as the default 1
        (variant(it=0, mt=0), 0, Demand(cpus=1, memory_bytes=64 * MIB, gpus=0, pool="", instances=0)),
        # explicit resources win over the derived values
        (
            variant(it=4, mt=4, cpus=0.5, mem=3 * GIB, gpus=2, pool="gpu-a", instances=3),
            100 * MIB,
            Demand(cpus=0.5, memory_bytes=3 * GIB, gpus=2, pool="gpu-a", instances=3),
        ),
    ],
    ids=["derived", "defaults", "explicit"],
)
def test_demand_for(spec: deployments_pb2.VariantSpec, model_bytes: int, expected: Demand) -> None:
    assert demand_for(spec, model_bytes=model_bytes) == expected


def test_estimate_memory() -> None:
    assert estimate_memory(GIB) == 2 * GIB + 64 * MIB


# ---- reasons for a node that is not chosen -------------------------------------------
@pytest.mark.parametrize(
    ("demand", "node", "reason"),
    [
        (d(), n("x", ready=False), "node is not ready"),
        (d(), n("x", schedulable=False), "node is cordoned"),
        (d(), n("x", ready=False, schedulable=False), "node is not ready"),
        (d(pool="gpu-a"), n("x", pool="cpu"), "pool 'gpu-a' does not match the node's pool 'cpu'"),
        (d(pool="gpu-a"), n("x"), "pool 'gpu-a' does not match the node, which has no pool label"),
        (d(4), n("x", cpus=8, used_cpus=6), "needs 4 cpus, 2 of 8 free"),
        (d(1.5), n("x", cpus=1), "needs 1.5 cpus, 1 of 1 free"),
        (d(gpus=2), n("x", gpus=0), "needs 2 gpus, 0 of 0 free"),
        (d(gpus=1), n("x", gpus=2, used_gpus=2), "needs 1 gpu, 0 of 2 free"),
        (d(mem=4 * GIB), n("x", mem=8 * GIB, used_mem=5 * GIB), "needs 4 GiB memory, 3 GiB of 8 GiB free"),
        # an over-committed node shows 0 free, never a negative amount
        (d(1), n("x", cpus=2, used_cpus=3), "needs 1 cpu, 0 of 2 free"),
        (
            d(4, mem=2 * GIB, gpus=1),
            n("x", cpus=2, mem=GIB, gpus=0),
            "needs 4 cpus, 2 of 2 free; needs 2 GiB memory, 1 GiB of 1 GiB free; needs 1 gpu, 0 of 0 free",
        ),
    ],
)
def test_reason_for_not_eligible_node(demand: Demand, node: NodeView, reason: str) -> None:
    result = place(demand, [node], current=())
    assert result.targets == ()
    assert result.not_chosen == {"x": reason}


@pytest.mark.parametrize(
    ("demand", "node"),
    [
        (d(8, mem=32 * GIB), n("x")),  # an exact fit
        (d(0.3), n("x", cpus=1, used_cpus=0.1 + 0.2 + 0.4)),  # float rounding never refuses an exact fit
        (d(pool="gpu-a", gpus=1), n("x", pool="gpu-a", gpus=1)),
        (d(), n("x", pool="anything")),  # no pool asked: any node
    ],
)
def test_eligible_node(demand: Demand, node: NodeView) -> None:
    assert place(demand, [node], current=()) == Placement(targets=("x",), not_chosen={}, shortfall=None)


# ---- how many and which ----------------------------------------------------------
def test_instances_zero_takes_every_eligible_node() -> None:
    nodes = [
        n("a", used_cpus=6),
        n("b"),
        n("c", ready=False),
        n("d", schedulable=False),
        n("e", cpus=16),
        n("f", used_cpus=7.5),
    ]
    result = place(d(1), nodes, current=())
    assert result.targets == ("e", "b", "a")  # by most free cpus
    assert result.not_chosen == {
        "c": "node is not ready",
        "d": "node is cordoned",
        "f": "needs 1 cpu, 0.5 of 8 free",
    }
    assert result.shortfall is None


def test_instances_n_picks_most_free_cpus_then_node_id() -> None:
    nodes = [n("a", used_cpus=4), n("c"), n("b"), n("d", cpus=16, used_cpus=12)]
    result = place(d(1, instances=2), nodes, current=())
    assert result.targets == ("b", "c")
    assert result.not_chosen == {"a": "instances limit 2 reached", "d": "instances limit 2 reached"}


def test_instances_more_than_eligible_takes_what_there_is() -> None:
    result = place(d(1, instances=5), [n("a"), n("b", ready=False)], current=())
    assert result.targets == ("a",)
    assert result.not_chosen == {"b": "node is not ready"}
    assert result.shortfall is None


@pytest.mark.parametrize("instances", [0, 1, 3])
def test_current_node_is_kept_without_a_fit_check(instances: int) -> None:
    # "a" is full, but its usage already includes this variant's own allocation
    nodes = [n("a", used_cpus=8, used_mem=32 * GIB), n("b"), n("c")]
    result = place(d(4, instances=instances), nodes, current={"a"})
    assert result.targets[0] == "a"
    assert "a" not in result.not_chosen


def test_cordoned_current_node_keeps_its_allocation() -> None:
    nodes = [n("a", schedulable=False), n("b")]
    result = place(d(1, instances=1), nodes, current=["a"])
    assert result.targets == ("a",)
    assert result.not_chosen == {"b": "instances limit 1 reached"}


def test_current_node_not_ready_is_replaced() -> None:
    nodes = [n("a", ready=False), n("b"), n("c", used_cpus=1)]
    result = place(d(1, instances=1), nodes, current=["a"])
    assert result.targets == ("b",)
    assert result.not_chosen == {"a": "node is not ready", "c": "instances limit 1 reached"}


def test_current_node_absent_from_nodes_is_ignored() -> None:
    result = place(d(1, instances=2), [n("b")], current=["gone"])
    assert result == Placement(targets=("b",), not_chosen={}, shortfall=None)


def test_kept_nodes_come_first_then_added_ones() -> None:
    nodes = [n("a", used_cpus=7), n("b"), n("c", cpus=32)]
    result = place(d(1, instances=2), nodes, current=["a"])
    assert result.targets == ("a", "c")
    assert result.not_chosen == {"b": "instances limit 2 reached"}


def test_scale_down_keeps_schedulable_then_by_node_id() -> None:
    nodes = [n("a", schedulable=False), n("b"), n("c"), n("d")]
    result = place(d(1, instances=2), nodes, current=["a", "c", "b"])
    assert result.targets == ("b", "c")
    assert result.not_chosen == {"a": "instances limit 2 reached", "d": "instances limit 2 reached"}


def test_every_node_is_a_target_or_has_a_reason_and_order_does_not_matter() -> None:
    rng = random.Random(7)
    nodes = [
        n(
            f"n{i:02d}",
            cpus=rng.choice([2, 4, 8]),
            gpus=rng.choice([0, 1]),
            pool=rng.choice([None, "cpu", "gpu"]),
            ready=rng.random() > 0.2,
            schedulable=rng.random() > 0.2,
            used_cpus=rng.choice([0, 1, 3]),
        )
        for i in range(40)
    ]
    current = {f"n{i:02d}" for i in range(0, 40, 7)}
    for demand in [d(2), d(2, instances=3), d(1, gpus=1, pool="gpu", instances=2), d(1, instances=1)]:
        result = place(demand, nodes, current=current)
        assert set(result.targets).isdisjoint(result.not_chosen)
        assert set(result.targets) | set(result.not_chosen) == {x.node_id for x in nodes}
        assert all(result.not_chosen.values())
        if demand.instances:
            assert len(result.targets) <= demand.instances
        shuffled = list(nodes)
        rng.shuffle(shuffled)
        assert place(demand, shuffled, current=current) == result


def test_negative_instances_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        place(d(1, instances=-1), [n("a")], current=())


# ---- shortfall -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("demand", "nodes", "shortfall"),
    [
        (d(1), [], "no nodes have joined the fleet"),
        (d(1, pool="gpu-a"), [n("a", pool="cpu"), n("b")], "no node in pool 'gpu-a'"),
        (d(16), [n("a", cpus=8), n("b", cpus=4)], "no node can fit 16 cpus (largest has 8)"),
        (d(2, gpus=2), [n("a", gpus=0)], "no node can fit 2 gpus (largest has 0)"),
        (d(1, mem=64 * GIB), [n("a", mem=32 * GIB)], "no node can fit 64 GiB memory (largest has 32 GiB)"),
        (
            d(16, gpus=1, pool="gpu-a"),
            [n("a", cpus=8, gpus=1, pool="gpu-a"), n("b", cpus=64, pool="cpu")],
            "no node in pool 'gpu-a' can fit 16 cpus (largest has 8)",
        ),
        (
            d(16, gpus=4),
            [n("a", cpus=8), n("b", cpus=8, gpus=1)],
            "no node can fit 16 cpus (largest has 8); no node can fit 4 gpus (largest has 1)",
        ),
        # each resource fits somewhere, but never together on one node
        (
            d(16, gpus=1),
            [n("a", cpus=32), n("b", cpus=8, gpus=1)],
            "no node can fit 16 cpus, 1 GiB memory and 1 gpu together",
        ),
        (
            d(16, mem=64 * GIB),
            [n("a", cpus=32), n("b", cpus=8, mem=128 * GIB)],
            "no node can fit 16 cpus and 64 GiB memory together",
        ),
    ],
)
def test_shortfall_names_what_no_node_can_hold(demand: Demand, nodes: list[NodeView], shortfall: str) -> None:
    result = place(demand, nodes, current=())
    assert result.shortfall == shortfall
    assert result.targets == ()


@pytest.mark.parametrize(
    "node",
    [
        n("a", ready=False),  # down now, but big enough
        n("a", schedulable=False),
        n("a", used_cpus=8, used_gpus=1),  # busy now, but big enough
    ],
)
def test_no_shortfall_when_some_node_could_ever_fit(node: NodeView) -> None:
    result = place(d(8, gpus=1), [replace(node, gpus=1)], current=())
    assert result.targets == ()
    assert result.shortfall is None
    assert result.not_chosen["a"]
