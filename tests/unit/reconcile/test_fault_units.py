"""Unit tests of the fault-tolerance rules, tick by tick with a fake clock and
the in-memory store (no sockets, no processes; the same World as
test_reconciler.py): make-before-break drain, the recovery grace after a
restart, graceful-shutdown routes on a lost node, stale-stream fencing, the
gateway's "never accepted" rule and the classification of worker exits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from test_reconciler import RUNNING, STOPPED, Clock, World

from control_plane.fleet.liveness import Fleet, Liveness
from control_plane.gateway.service import never_accepted
from control_plane.nodes.agents import AgentStreams
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, common_pb2
from node_agent.exits import exit_outcome

S = common_pb2


def cordon(w: World, node_id: str, schedulable: bool = False) -> None:
    node = w.store.get_node(node_id)
    node.schedulable = schedulable
    w.store.put_node(node)
    w.rec.reconcile()


def allocs(w: World, deployment_id: str, desired: int = RUNNING) -> dict[str, records_pb2.AllocationRecord]:
    return {a.node_id: a for a in w.store.list_allocations(deployment_id=deployment_id) if a.desired == desired}


def test_drain_places_the_replacement_first_and_stops_the_old_one_once_it_started() -> None:
    w = World()
    w.join("a")
    w.join("b")
    w.deploy("one", instances=1)
    (first,) = allocs(w, "one")
    other = "b" if first == "a" else "a"
    w.report_all(first, S.ROUTING_STATE_STARTED)
    cordon(w, first)
    running = allocs(w, "one")
    assert set(running) == {first, other}  # make: the replacement is placed, the old one keeps serving
    assert [r.node_id for r in w.rec.route_table.by_deployment["one"]] == [first]
    w.report_all(other, S.ROUTING_STATE_STARTING)
    assert set(allocs(w, "one")) == {first, other}
    w.report_all(other, S.ROUTING_STATE_STARTED)
    assert set(allocs(w, "one")) == {other}  # break: only now
    stopping = allocs(w, "one", STOPPED)[first]
    assert stopping.routing_state == S.ROUTING_STATE_STOPPING and "node drained" in stopping.reason
    # uncordon: eligible again, but the moved allocation stays where it is
    cordon(w, first, schedulable=True)
    assert set(allocs(w, "one")) == {other}


def test_drain_of_every_node_deployment_and_with_nowhere_to_go() -> None:
    w = World()
    w.join("a")
    w.join("b")
    w.deploy("all")
    w.report_all("a", S.ROUTING_STATE_STARTED)
    w.report_all("b", S.ROUTING_STATE_STARTED)
    cordon(w, "a")
    assert set(allocs(w, "all")) == {"b"}  # b already serves it: a's copy stops at once
    lone = World()
    lone.join("a")
    lone.deploy("one", instances=1)
    lone.report_all("a", S.ROUTING_STATE_STARTED)
    cordon(lone, "a")
    assert set(allocs(lone, "one")) == {"a"}  # nowhere to go: it keeps serving on the cordoned node
    assert lone.view("one").allocations[0].routing_table["a"].reason.startswith("node drained")


def test_recovered_nodes_get_the_recovery_grace_before_they_are_lost() -> None:
    clock = Clock()
    fleet = Fleet(heartbeat_interval=0.2, node_timeout=1.0, clock=clock)
    fleet.recover(["n", "m"], grace=10.0)
    clock.now += 5.0
    assert fleet.sweep() == [] and fleet.state("n") == Liveness.SUSPECT
    fleet.attach("m")  # reconnected: an ordinary READY node from now on
    clock.now += 5.1
    fleet.touch("m")
    assert fleet.sweep() == ["n"]
    assert fleet.state("n") == Liveness.LOST and fleet.state("m") == Liveness.READY
    fleet.detach(fleet.session("m"))  # its stream closes: the node timeout applies, not the grace
    clock.now += 1.1
    assert fleet.sweep() == ["m"] and fleet.state("m") == Liveness.LOST
    default = Fleet(heartbeat_interval=5, node_timeout=30, clock=clock)
    default.recover(["x"])
    clock.now += 65.0
    assert default.sweep() == []  # 30 s node timeout + 36 s of the longest backoff
    clock.now += 1.1
    assert default.sweep() == ["x"]


def test_a_lost_node_keeps_routes_its_agent_reported_stopped() -> None:
    w = World()
    w.join("a")
    w.join("b")
    w.deploy("all")
    w.report_all("a", S.ROUTING_STATE_STOPPED, "stopped")  # the agent shut down gracefully
    w.report_all("b", S.ROUTING_STATE_STARTED)
    w.fleet.detach(w.sessions["a"])
    w.clock.now += 1.5
    w.fleet.touch("b")
    w.rec.agents.on_liveness_change(w.fleet.sweep())
    assert w.fleet.state("a") == Liveness.LOST
    assert w.view("all").allocations[0].routing_table["a"].routing_state == S.ROUTING_STATE_STOPPED
    assert w.view("all").allocations[0].routing_table["b"].routing_state == S.ROUTING_STATE_STARTED


def test_messages_on_a_replaced_stream_change_nothing() -> None:
    w = World()
    streams = AgentStreams(agents=w.rec.agents, store=w.store, fleet=w.fleet)
    info = agent_pb2.NodeInfo(node_id="a", capacity=S.NodeCapacity(cpus=4, memory_bytes=8 << 30))
    w.store.put_node(records_pb2.NodeRecord(info=info, schedulable=True))
    w.join("b")
    w.deploy("one", instances=1)
    (node,) = allocs(w, "one")
    alloc = allocs(w, "one")[node]

    async def scenario() -> None:
        release = asyncio.Event()

        async def old_stream() -> AsyncIterator[agent_pb2.AgentMessage]:
            yield agent_pb2.AgentMessage(register=agent_pb2.RegisterNode(node=w.store.get_node(node).info))
            await release.wait()  # the node re-registers on a new stream meanwhile
            report = agent_pb2.AllocationReport(allocation_id=alloc.allocation_id, routing_state=S.ROUTING_STATE_FAILED, reason="stale")
            yield agent_pb2.AgentMessage(report=agent_pb2.RoutingReport(allocations=[report]))

        old = streams.connect(old_stream())
        await anext(old)  # welcome: the old stream is attached
        newer = w.fleet.attach(node)  # a newer registration replaces it
        release.set()
        async for _ in old:
            pass
        assert w.fleet.session(node) is newer

    asyncio.run(scenario())
    assert w.store.get_allocation(alloc.allocation_id).routing_state != S.ROUTING_STATE_FAILED


@pytest.mark.parametrize(
    ("code", "details", "retry"),
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused", True),
        (grpc.StatusCode.UNAVAILABLE, "worker is draining", True),
        (grpc.StatusCode.UNAVAILABLE, "worker is draining; the call was not run in time", True),
        (grpc.StatusCode.UNAVAILABLE, "worker is not serving", True),
        (grpc.StatusCode.UNAVAILABLE, "Stream removed (Socket closed)", False),  # it may have run
        (grpc.StatusCode.UNAVAILABLE, "recvmsg:Connection reset by peer", False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "worker is draining", False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full (capacity 1)", False),
    ],
)
def test_gateway_retries_only_calls_that_certainly_never_ran(code: grpc.StatusCode, details: str, retry: bool) -> None:
    assert never_accepted(code, details) is retry


def test_worker_exit_classification(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("old run\n--- start\nserving m\nload error: bad file\n")
    offset = len("old run\n")
    assert exit_outcome(3, log_file=log, log_offset=offset, uptime=0).permanent
    assert exit_outcome(3, log_file=log, log_offset=offset, uptime=0).summary == "load error: bad file"
    crash = exit_outcome(-9, log_file=log, log_offset=offset, uptime=5)
    assert not crash.permanent and not crash.stopped and crash.reason.startswith("worker killed by signal SIGKILL; stderr: ")
    assert "old run" not in crash.reason
    clean = exit_outcome(0, log_file=log, log_offset=offset, uptime=5)
    assert clean.stopped and clean.summary == "worker stopped outside the agent (exited with code 0)"
    assert exit_outcome(None, log_file=log, log_offset=offset, uptime=5, draining=True).stopped
    assert not exit_outcome(1, log_file=log, log_offset=offset, uptime=5).stopped


def test_a_node_lost_while_its_stream_is_open_must_register_again() -> None:
    """A stalled control plane can find a READY node silent past the node timeout: LOST at once.
    Its still-open stream is closed, so it comes back only through a full registration."""
    clock = Clock()
    fleet = Fleet(heartbeat_interval=0.2, node_timeout=1.0, clock=clock)
    session = fleet.attach("n")
    clock.now += 1.5  # no sweep ran meanwhile
    assert fleet.sweep() == ["n"] and fleet.state("n") == Liveness.LOST
    assert session.closed and fleet.session("n") is None
    fleet.touch("n")  # a late heartbeat on the old stream revives nothing
    assert fleet.state("n") == Liveness.LOST
    fleet.attach("n")
    assert fleet.state("n") == Liveness.READY
