"""Reliability scenarios of a real network (tests/netns.py): agents and their
workers on test hosts in network namespaces, the control plane and its
embedded gateway in the test's namespace, so every call crosses a veth.
Heartbeat H = 0.2 s, node timeout T = 3 s (longer than the gateway needs to
notice a silent host, as in production).

N1. silent partition of one serving host among two (its link down, no
    reset): the gateway ejects the silent worker by itself; at most the
    calls in flight at the cut fail, each within its deadline, none hangs,
    and every call started more than 1 s after the cut is answered by the
    other host; once the link is back the fleet converges (one route and one
    worker per allocation).
N2. data path cut, stream up (only the worker's port dropped): the gateway
    ejects the worker (gauge and counter on /metrics) while the control
    plane still sees the node READY.

Run as root (CI does); elsewhere they skip, saying why. Figures go to
tests/figures.py.
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster import Cluster, wait_until, worker_processes
from faults import Load, Outcome
from figures import record
from modelbuild import onnx_add
from netns import Host
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.v1 import common_pb2, nodes_pb2
from modelfleet.v1 import deployments_pb2 as dpb

H, T = 0.2, 3.0
DEADLINE = 2.0
SLACK = 0.5  # a failed call ends within its deadline plus this
STARTED = common_pb2.ROUTING_STATE_STARTED


@pytest.fixture
def fleet(tmp_path: Path, netns_hosts: Callable[[int], list[Host]]) -> Iterator[tuple[Cluster, list[Host]]]:
    """A control plane on 0.0.0.0 and one agent on each of two test hosts."""
    hosts = netns_hosts(2)
    c = Cluster(tmp_path, heartbeat=H, node_timeout=T)
    try:
        c.start_control_plane("0.0.0.0:0", extra_args=["--metrics-port", "0"])
        port = c.addr.rsplit(":", 1)[1]
        for i, host in enumerate(hosts):
            c.start_agent(f"host-{i}", prefix=host.prefix, control_plane=f"{host.gateway}:{port}",
                          extra_args=["--worker-host", host.address])  # fmt: skip
        c.wait_nodes(2, timeout=60)
        yield c, hosts
    finally:
        for host in hosts:
            host.heal()
        print(f"orphan workers killed at cleanup: {c.close()}")


def deploy(c: Cluster, tmp_path: Path) -> dict[str, dpb.RoutingEntry]:
    """Deployment "net": one allocation on each host; returns node id -> its routing entry."""
    c.upload(onnx_add(tmp_path / "add.onnx"), "add")
    req = dpb.StartDeploymentRequest(model_id="add", deployment_id="net", instances=2, wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED)
    req.timeout.FromSeconds(90)
    c.deployments.StartDeployment(req, timeout=120)
    table = dict(c.get("net").allocations[0].routing_table)
    assert len(table) == 2 and all(e.routing_state == STARTED for e in table.values()), table
    return table


def gateway_address(c: Cluster) -> str:
    return "127.0.0.1:" + c.addr.rsplit(":", 1)[1]


def metrics(c: Cluster) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    endpoint = (c.root / "cp" / "metrics_endpoint").read_text().strip()
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def ejected(c: Cluster) -> float:
    return metrics(c).get(("modelfleet_gateway_ejected_workers", frozenset({("deployment", "net")})), 0.0)


def ejections(c: Cluster) -> float:
    return metrics(c).get(("modelfleet_gateway_ejections_total", frozenset({("deployment", "net")})), 0.0)


def node_state(c: Cluster, node_id: str) -> int:
    return c.nodes.GetNode(nodes_pb2.GetNodeRequest(node_id=node_id)).state


def converged(c: Cluster) -> bool:
    """One STARTED route per wanted allocation and exactly one worker process for each."""
    table = c.get("net").allocations[0].routing_table
    started = {e.allocation_id for e in table.values() if e.routing_state == STARTED}
    workers = [aid for _, (name, aid) in worker_processes(c.root).items() if name == "net"]
    return len(started) == 2 and sorted(workers) == sorted(started)


def failures(outcomes: list[Outcome], *, after: float) -> list[Outcome]:
    return [o for o in outcomes if o.code != "OK" and o.ended > after]


def test_n1_silent_partition_the_gateway_ejects_the_host_before_the_node_is_lost(fleet: tuple[Cluster, list[Host]], tmp_path: Path) -> None:
    c, hosts = fleet
    table = deploy(c, tmp_path)
    victim = hosts[0]
    victim_id = c.node_id("host-0")
    assert victim_id in table
    with Load(lambda: [(gateway_address(c), "net")], threads=4, deadline=DEADLINE, pace=0.02, token=c.token) as load:
        load.wait_calls(40, timeout=60)
        cut = time.monotonic()
        victim.link_down()
        wait_until(lambda: ejected(c) >= 1, timeout=DEADLINE + 5, interval=0.02, what="the gateway to eject the silent worker")
        noticed = time.monotonic() - cut
        wait_until(lambda: node_state(c, victim_id) == nodes_pb2.NODE_STATE_LOST, timeout=T + 10, interval=0.05, what="node lost")
        lost = time.monotonic() - cut
        wait_until(lambda: any(o.started > cut + lost + 1 for o in load.snapshot()), timeout=30, what="calls after the node was lost")
        healed = time.monotonic()
        victim.link_up()
        wait_until(lambda: converged(c), timeout=60, interval=0.05, what="one route and one worker per allocation")
        converge = time.monotonic() - healed
        load.wait_calls(20, timeout=30)
    outcomes = load.snapshot()
    in_flight = [o for o in outcomes if o.started <= cut < o.ended]
    failed = failures(outcomes, after=cut)
    late = [o for o in failed if o.started > cut + 1.0]
    hung = [o for o in outcomes if o.ended - o.started > DEADLINE + SLACK]
    window = [o for o in outcomes if cut < o.started < healed]
    record("N1", "calls in flight at the cut", len(in_flight))
    record("N1", "calls failed after the cut", len(failed), "", f"of {len(window)} started between cut and heal")
    record("N1", "failed calls started more than 1 s after the cut", len(late), "", "promise: 0")
    record("N1", "failed calls by status", " ".join(f"{k}={v}" for k, v in sorted(Counter(o.code for o in failed).items())))
    record("N1", "link down -> worker ejected (gauge)", noticed, "s", "keepalive closes the silent connection")
    record("N1", "link down -> node lost", lost, "s", f"T = {T:g} s")
    record("N1", "link up -> converged (one route and worker per allocation)", converge, "s")
    record("N1", "longest failed call", max((o.ended - o.started for o in failed), default=0.0), "s", f"deadline {DEADLINE:g} s")
    assert not hung, hung
    assert not late, late
    assert all(o.ended - o.started <= DEADLINE + SLACK for o in failed), failed
    assert noticed < lost
    assert not failures(outcomes, after=healed + converge + 1.0)


def test_n2_data_path_cut_the_gateway_ejects_the_worker_while_the_node_stays_ready(fleet: tuple[Cluster, list[Host]], tmp_path: Path) -> None:
    c, hosts = fleet
    table = deploy(c, tmp_path)
    victim_id = c.node_id("host-0")
    worker_port = int(table[victim_id].worker_address.rsplit(":", 1)[1])
    with Load(lambda: [(gateway_address(c), "net")], threads=4, deadline=DEADLINE, token=c.token) as load:
        load.wait_calls(40, timeout=60)
        before = ejections(c)
        cut = time.monotonic()
        hosts[0].drop("both", port=worker_port)
        wait_until(lambda: ejected(c) >= 1, timeout=DEADLINE + 5, interval=0.02, what="the gateway to eject the unreachable worker")
        noticed = time.monotonic() - cut
        mark = time.monotonic()
        load.wait_calls(60, timeout=30)
        states = {node_state(c, victim_id) for _ in range(3)}
        assert states == {nodes_pb2.NODE_STATE_READY}, states  # the agent's stream is untouched
        assert c.get("net").allocations[0].routing_table[victim_id].routing_state == STARTED
        assert ejections(c) > before
    after = [o for o in load.snapshot() if o.started > mark]
    record("N2", "worker port dropped -> worker ejected (gauge)", noticed, "s")
    record("N2", "calls failed after the cut", len(failures(load.snapshot(), after=cut)))
    record("N2", "calls after the ejection answered", sum(o.code == "OK" for o in after), "", f"of {len(after)}")
    assert all(o.code == "OK" for o in after), [o for o in after if o.code != "OK"]
