"""Lists at fleet scale through a real control plane: pages (sizes, clamping,
tokens across a restart, tokens of another query), views (BASIC rows,
FULL tables), placement reasons counted by reason, filters, watch resume,
and the CLI paging on its own. Nodes are scripted agents (tests/fakeagent.py)
so many deployments need no worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from cluster import Cluster, wait_until
from fakeagent import FakeAgent
from modelbuild import onnx_add

from modelfleet.v1 import auth_pb2, auth_pb2_grpc, common_pb2, models_pb2, nodes_pb2
from modelfleet.v1 import deployments_pb2 as dpb

NODES = 12
DEPLOYMENTS = 25
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, list[FakeAgent]]]:
    root = tmp_path_factory.mktemp("paging")
    c = Cluster(root, heartbeat=0.5, node_timeout=30, cp_args=["--max-deployments-per-user", "100"])
    agents: list[FakeAgent] = []
    try:
        c.start_control_plane()
        for i in range(NODES):
            node_id = f"node-{i:02d}"
            agents.append(FakeAgent(c.addr, c.create_key("agent", node_id=node_id).token, node_id, cpus=64))
            agents[-1].cooperate("127.0.0.1:9")  # heartbeats; reports what it is given as started (no worker runs)
        c.wait_nodes(NODES)
        c.upload(onnx_add(root / "add.onnx"), "add")
        for i in range(DEPLOYMENTS):
            req = dpb.StartDeploymentRequest(model_id="add", deployment_id=f"dep-{i:02d}", instances=1, wait_for=dpb.WAIT_FOR_STARTING)
            c.deployments.StartDeployment(req, timeout=30)
        yield c, agents
    finally:
        for agent in agents:
            agent.close()
        c.close()


def list_all(c: Cluster, page_size: int, **fields: object) -> tuple[list[str], int]:
    """Every deployment id, page by page; and how many pages it took."""
    ids: list[str] = []
    token, pages = "", 0
    while True:
        req = dpb.ListDeploymentsRequest(page=common_pb2.PageRequest(page_size=page_size, page_token=token), **fields)  # type: ignore[arg-type]
        resp = c.deployments.ListDeployments(req, timeout=10)
        ids += [d.deployment_id for d in resp.deployments]
        pages += 1
        token = resp.next_page_token
        if not token:
            return ids, pages


def test_pages_cover_every_deployment_once_in_a_stable_order(fleet: tuple[Cluster, list[FakeAgent]]) -> None:
    c, _ = fleet
    ids, pages = list_all(c, 10)
    assert ids == [f"dep-{i:02d}" for i in range(DEPLOYMENTS)] and pages == 3
    assert list_all(c, 0) == (ids, 1)  # 0 = the default of 100
    assert list_all(c, 5000) == (ids, 1)  # clamped to 1,000, not refused
    with pytest.raises(grpc.RpcError) as err:
        c.deployments.ListDeployments(dpb.ListDeploymentsRequest(page=common_pb2.PageRequest(page_size=-1)), timeout=10)
    assert err.value.code() == INVALID and "page.page_size must be >= 0" in (err.value.details() or "")


def test_bad_tokens_and_tokens_of_another_query_are_refused(fleet: tuple[Cluster, list[FakeAgent]]) -> None:
    c, _ = fleet
    first = c.deployments.ListDeployments(dpb.ListDeploymentsRequest(page=common_pb2.PageRequest(page_size=5)), timeout=10)
    for token, words in (("not-a-token", "not a token this API issued"), (first.next_page_token[:-3] + "zzz", "")):
        with pytest.raises(grpc.RpcError) as err:
            c.deployments.ListDeployments(dpb.ListDeploymentsRequest(page=common_pb2.PageRequest(page_token=token)), timeout=10)
        assert err.value.code() == INVALID and "page.page_token" in (err.value.details() or "") and words in (err.value.details() or "")
    other = dpb.ListDeploymentsRequest(page=common_pb2.PageRequest(page_token=first.next_page_token), model_id="add")
    with pytest.raises(grpc.RpcError) as err:
        c.deployments.ListDeployments(other, timeout=10)
    assert err.value.code() == INVALID and "issued for another query" in (err.value.details() or "")


def test_views_count_routes_and_summarise_reasons(fleet: tuple[Cluster, list[FakeAgent]]) -> None:
    c, _ = fleet
    [basic] = c.deployments.ListDeployments(dpb.ListDeploymentsRequest(page=common_pb2.PageRequest(page_size=1)), timeout=10).deployments
    [alloc] = basic.allocations
    assert not alloc.routing_table and not alloc.not_chosen and not alloc.not_chosen_summary
    assert sum(alloc.route_counts.values()) == 1 and alloc.target_nodes == 1 and alloc.weight == 100
    full = c.get(basic.deployment_id)  # GetDeployment: FULL by default
    [alloc] = full.allocations
    assert len(alloc.routing_table) == 1 and not alloc.not_chosen
    [why] = alloc.not_chosen_summary
    assert (why.reason, why.count, len(why.example_nodes)) == ("instances limit 1 reached", NODES - 1, 2)
    per_node = c.deployments.GetDeployment(dpb.GetDeploymentRequest(deployment_id=basic.deployment_id, per_node_reasons=True), timeout=10)
    reasons = per_node.allocations[0].not_chosen
    assert len(reasons) == NODES - 1 and set(reasons.values()) == {"instances limit 1 reached"}
    assert set(reasons).isdisjoint(per_node.allocations[0].routing_table)
    with pytest.raises(grpc.RpcError) as err:
        c.deployments.GetDeployment(
            dpb.GetDeploymentRequest(deployment_id=basic.deployment_id, view=common_pb2.VIEW_BASIC, per_node_reasons=True), timeout=10
        )
    assert err.value.code() == INVALID and "per_node_reasons needs view VIEW_FULL" in (err.value.details() or "")
    listed_full = c.deployments.ListDeployments(
        dpb.ListDeploymentsRequest(view=common_pb2.VIEW_FULL, page=common_pb2.PageRequest(page_size=1)), timeout=10
    ).deployments[0]
    assert listed_full.allocations[0].routing_table and listed_full.allocations[0].not_chosen_summary
    basic_bytes = c.deployments.ListDeployments(dpb.ListDeploymentsRequest(), timeout=10).ByteSize()
    full_bytes = c.deployments.ListDeployments(dpb.ListDeploymentsRequest(view=common_pb2.VIEW_FULL), timeout=10).ByteSize()
    print(f"list of {DEPLOYMENTS} deployments on {NODES} nodes: BASIC {basic_bytes} B, FULL {full_bytes} B")
    assert basic_bytes < full_bytes


def test_filters_nodes_models_keys_and_events_page_too(fleet: tuple[Cluster, list[FakeAgent]]) -> None:
    c, _ = fleet
    stopped = "dep-03"
    c.deployments.StopDeployment(dpb.StopDeploymentRequest(deployment_id=stopped), timeout=10)
    wait_until(lambda: c.get(stopped).status == common_pb2.DEPLOYMENT_STATUS_STOPPED or None, timeout=20, what="dep-03 stopped")
    assert list_all(c, 2, status=common_pb2.DEPLOYMENT_STATUS_STOPPED)[0] == [stopped]
    assert len(list_all(c, 7, model_id="add")[0]) == DEPLOYMENTS and list_all(c, 7, model_id="other")[0] == []
    assert list_all(c, 7, owner="nobody")[0] == []
    nodes, token = [], ""
    while True:
        resp = c.nodes.ListNodes(nodes_pb2.ListNodesRequest(page=common_pb2.PageRequest(page_size=5, page_token=token)), timeout=10)
        nodes += [n.node_id for n in resp.nodes]
        token = resp.next_page_token
        if not token:
            break
    assert nodes == [f"node-{i:02d}" for i in range(NODES)]
    ready = c.nodes.ListNodes(nodes_pb2.ListNodesRequest(state=nodes_pb2.NODE_STATE_LOST), timeout=10)
    assert not ready.nodes
    with pytest.raises(grpc.RpcError) as err:
        c.nodes.ListNodes(nodes_pb2.ListNodesRequest(label_selector="pool"), timeout=10)
    assert err.value.code() == INVALID and "label_selector 'pool': expected key=value" in (err.value.details() or "")
    assert not c.nodes.ListNodes(nodes_pb2.ListNodesRequest(label_selector="pool=gpu"), timeout=10).nodes
    models = c.models.ListModels(models_pb2.ListModelsRequest(page=common_pb2.PageRequest(page_size=1)), timeout=10)
    assert [m.model_id for m in models.models] == ["add"] and not models.next_page_token
    keys = auth_pb2_grpc.AuthStub(c.channel).ListApiKeys(auth_pb2.ListApiKeysRequest(page=common_pb2.PageRequest(page_size=4)), timeout=10)
    assert len(keys.api_keys) == 4 and keys.next_page_token
    events = c.deployments.ListDeploymentEvents(
        dpb.ListDeploymentEventsRequest(deployment_id=stopped, page=common_pb2.PageRequest(page_size=1)), timeout=10
    )
    assert [e.seq for e in events.events] == [1] and events.next_page_token


def test_a_watch_resumes_after_the_last_event_it_saw(fleet: tuple[Cluster, list[FakeAgent]]) -> None:
    c, _ = fleet
    dep = "dep-05"
    c.deployments.StopDeployment(dpb.StopDeploymentRequest(deployment_id=dep), timeout=10)
    events = c.deployments.ListDeploymentEvents(dpb.ListDeploymentEventsRequest(deployment_id=dep), timeout=10).events
    assert len(events) >= 2
    stream = c.deployments.WatchDeployment(dpb.WatchDeploymentRequest(deployment_id=dep, after_seq=events[0].seq), timeout=10)
    first = next(iter(stream))
    stream.cancel()
    seqs = [e.seq for e in first.events]
    # every event after the one it saw, none before (the stop may have recorded more since the list)
    assert first.resumed and seqs == list(range(events[0].seq + 1, events[0].seq + 1 + len(seqs)))
    assert seqs[: len(events) - 1] == [e.seq for e in events[1:]]
    future = c.deployments.WatchDeployment(dpb.WatchDeploymentRequest(deployment_id=dep, after_seq=10_000), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        next(iter(future))
    assert err.value.code() == INVALID and "after_seq 10000 is not an event of deployment 'dep-05'" in (err.value.details() or "")


def test_the_cli_pages_on_its_own_and_limits(fleet: tuple[Cluster, list[FakeAgent]]) -> None:
    c, _ = fleet
    env = {**os.environ, "MODELFLEET_ADDR": c.addr, "MODELFLEET_TOKEN": c.token}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelfleet.cli", *args], capture_output=True, text=True, env=env, timeout=60)

    rows = cli("deployments", "list", "--limit", "7")
    assert rows.returncode == 0, rows.stderr
    assert [line.split()[0] for line in rows.stdout.splitlines()[1:]] == [f"dep-{i:02d}" for i in range(7)]
    everything = json.loads(cli("deployments", "list", "--json").stdout)
    assert len(everything["deployments"]) == DEPLOYMENTS and "next_page_token" not in everything
    assert all("routing_table" not in a for d in everything["deployments"] for a in d["allocations"])
    started = [line for line in rows.stdout.splitlines()[1:] if line.split()[0] == "dep-00"]
    assert started and started[0].split()[-1] == "1/1"  # counts from route_counts, though BASIC has no table
    got = cli("deployments", "get", "dep-01")
    assert got.returncode == 0 and f"{NODES - 1} nodes: instances limit 1 reached (e.g. " in got.stdout
    nodes = cli("nodes", "list", "--limit", "3")
    assert len(nodes.stdout.splitlines()) == 4, nodes.stdout


def test_a_page_token_survives_a_control_plane_restart(fleet: tuple[Cluster, list[FakeAgent]]) -> None:
    c, _ = fleet
    first = c.deployments.ListDeployments(dpb.ListDeploymentsRequest(page=common_pb2.PageRequest(page_size=20)), timeout=10)
    c.cp.stop()
    c.start_control_plane(listen=c.addr)
    resp = wait_until(
        lambda: _try_list(c, dpb.ListDeploymentsRequest(page=common_pb2.PageRequest(page_size=20, page_token=first.next_page_token))),
        timeout=30, what="the second page after a restart",
    )  # fmt: skip
    assert [d.deployment_id for d in resp.deployments] == [f"dep-{i:02d}" for i in range(20, DEPLOYMENTS)]
    assert not resp.next_page_token


def _try_list(c: Cluster, req: dpb.ListDeploymentsRequest) -> dpb.ListDeploymentsResponse | None:
    try:
        return c.deployments.ListDeployments(req, timeout=5)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return None
        raise
