"""API keys and privileges through real control-plane processes (auth on).

- every method of every served service descriptor has an access-table
  entry, and a method missing from the table is denied;
- scenario 18 (the Elasticsearch ml-with-security pattern): every mutating
  RPC, enumerated from the service descriptors (methods of modelfleet.v1
  services not marked `idempotency_level = NO_SIDE_EFFECTS`), called with a
  viewer key and an inference key -> PERMISSION_DENIED and the state
  unchanged; with no key, a revoked key and an expired key every non-public
  method -> UNAUTHENTICATED; the admin key on the same requests is not
  refused (so the requests were real);
- scenario 19: a key never mints (or revokes) beyond its own privileges;
- scenario 20: an agent key acts for its own node only; stale reports
  change nothing;
- workers accept only the gateway/agent token and keys with `infer`;
- bootstrap, quota owner, `--auth off` only on loopback.

Agents are scripted (tests/fakeagent.py) where no worker is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cluster import ROOT, Cluster, authed_channel, wait_until
from fakeagent import FakeAgent
from google.protobuf import descriptor_pb2, field_mask_pb2, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from modelbuild import onnx_add
from rpcs import full_name, methods_of, served_services

from control_plane.api.server import ErrorMappingInterceptor
from control_plane.auth.access import METHOD_ACCESS, ROLES, AccessInterceptor, Principal
from modelfleet.inference import grpc_service_pb2 as v2
from modelfleet.inference import grpc_service_pb2_grpc as v2_grpc
from modelfleet.v1 import (
    agent_pb2,
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    models_pb2,
    nodes_pb2,
    worker_pb2,
    worker_pb2_grpc,
)
from modelfleet.v1 import (
    deployments_pb2 as dpb,
)
from node_agent.worker.access import WORKER_ACCESS
from node_agent.worker.server import CONTROL_SERVICE, HEALTH_SERVICE, INFERENCE_SERVICE

PD, UNAUTH = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED
READ_ONLY_SERVICES = {
    # Services outside modelfleet.v1 change no state: the V2 inference protocol
    # (ModelInfer computes, it stores nothing), health checks and reflection.
    "inference.GRPCInferenceService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
}  # fmt: skip
NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS


def invoke(channel: grpc.Channel, service: Any, method: Any, request: Any, *, timeout: float = 20) -> grpc.StatusCode:
    """Call any method generically; the status it ended with (OK for a stream that ended cleanly)."""
    req_cls = message_factory.GetMessageClass(method.input_type)
    resp_cls = message_factory.GetMessageClass(method.output_type)
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}  # fmt: skip
    call = kinds[(method.client_streaming, method.server_streaming)](
        full_name(service, method), request_serializer=req_cls.SerializeToString, response_deserializer=resp_cls.FromString
    )
    if request is None:
        request = req_cls()
    if method.client_streaming and isinstance(request, Message):
        request = [request]
    try:
        result = call(iter(request) if method.client_streaming else request, timeout=timeout)
        if method.server_streaming:
            for _ in result:
                pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def mutating_methods(services: list[str]) -> list[tuple[Any, Any]]:
    return [
        (s, m) for s, m in methods_of(services)
        if s.full_name not in READ_ONLY_SERVICES and m.GetOptions().idempotency_level != NO_SIDE_EFFECTS
    ]  # fmt: skip


def snapshot(c: Cluster) -> dict[str, list[bytes]]:
    """Everything a call could change, minus what moves on its own (heartbeat times, key activity,
    and liveness: the scripted agent sends no heartbeats, so on a slow run its node turns SUSPECT)."""
    auth = auth_pb2_grpc.AuthStub(c.channel)
    nodes = []
    for node in c.nodes.ListNodes(nodes_pb2.ListNodesRequest()).nodes:
        node.ClearField("last_heartbeat")
        node.ClearField("state")
        nodes.append(node.SerializeToString(deterministic=True))
    keys = []
    for key in auth.ListApiKeys(auth_pb2.ListApiKeysRequest(include_inactive=True)).api_keys:
        key.ClearField("active")
        keys.append(key.SerializeToString(deterministic=True))
    return {
        "models": [m.SerializeToString(deterministic=True) for m in c.models.ListModels(models_pb2.ListModelsRequest()).models],
        "deployments": [d.SerializeToString(deterministic=True) for d in c.deployments.ListDeployments(dpb.ListDeploymentsRequest()).deployments],
        "nodes": nodes,
        "keys": keys,
    }  # fmt: skip


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def add_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_add(tmp_path_factory.mktemp("models") / "add.onnx")


@contextlib.contextmanager
def make_plane(root: Path, add_model: Path) -> Iterator[dict[str, Any]]:
    """A control plane (slow heartbeats and an hour's node timeout: nothing changes on its own, and the
    scripted agents' streams stay open however long a slow run takes), a scripted agent on node-x,
    models add and spare, deployment add (STARTING on node-x), and keys of every kind."""
    c = Cluster(root, heartbeat=30, node_timeout=3600)
    agents: list[FakeAgent] = []
    try:
        c.start_control_plane()
        keys = {role: c.create_key(role, name=f"test {role}") for role in ("viewer", "inference", "deployer")}
        keys["agent"] = c.create_key("agent", name="node-x agent")
        keys["spare"] = c.create_key("viewer", name="spare")
        keys["expired"] = c.create_key("admin", ttl={"nanos": 200_000_000})
        keys["revoked"] = c.create_key("admin")
        auth_pb2_grpc.AuthStub(c.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=keys["revoked"].api_key.key_id))
        agent = FakeAgent(c.addr, keys["agent"].token, "node-x")
        agents.append(agent)
        agent.wait_for("welcome")
        assert c.upload(add_model, "add").state == common_pb2.MODEL_STATE_NORMAL
        assert c.upload(add_model, "spare").state == common_pb2.MODEL_STATE_NORMAL
        req = dpb.StartDeploymentRequest(model_id="add", wait_for=dpb.WAIT_FOR_STARTING)
        c.deployments.StartDeployment(req, timeout=30)
        yield {"cluster": c, "keys": keys, "agents": agents}
    finally:
        for a in agents:
            a.close()
        c.close()


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, add_model: Path) -> Iterator[dict[str, Any]]:
    with make_plane(tmp_path_factory.mktemp("security"), add_model) as made:
        yield made


def _token(plane: dict[str, Any], name: str) -> str:
    return str(plane["keys"][name].token)


# ---- the table --------------------------------------------------------------------------------
def test_every_method_of_every_served_service_is_in_the_access_table(plane: dict[str, Any]) -> None:
    services = served_services(plane["cluster"].addr)
    assert "modelfleet.v1.Auth" in services and "inference.GRPCInferenceService" in services
    served = {full_name(s, m) for s, m in methods_of(services)}
    assert served - METHOD_ACCESS.keys() == set(), "methods without an access rule (they are denied)"
    assert METHOD_ACCESS.keys() - served == set(), "access rules for methods nobody serves"
    # the worker's table covers the worker's services exactly
    worker = {full_name(s, m) for s, m in methods_of(
        [INFERENCE_SERVICE, CONTROL_SERVICE, HEALTH_SERVICE, "grpc.reflection.v1alpha.ServerReflection"])}  # fmt: skip
    assert worker == WORKER_ACCESS.keys()
    # only probes, health and reflection are public
    public = sorted(m for m, rule in METHOD_ACCESS.items() if rule.public)
    assert all(m.startswith(("/grpc.", "/inference.GRPCInferenceService/Server")) for m in public), public
    print(f"access table: {len(served)} methods on {len(services)} services, {len(public)} public")


def test_a_method_missing_from_the_table_is_denied() -> None:
    class Admin:
        async def authenticate(self, token: str) -> Principal:
            return Principal(user="admin", key_id="k", roles=("admin",), privileges=ROLES["admin"])

    async def scenario() -> tuple[grpc.StatusCode, str]:
        server = grpc.aio.server(interceptors=[ErrorMappingInterceptor(), AccessInterceptor(Admin())])

        async def echo(request: bytes, context: Any) -> bytes:
            return request

        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Unlisted", {"Echo": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    await channel.unary_unary("/test.Unlisted/Echo")(b"x", metadata=(("authorization", "Bearer t"),))
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), exc.details() or ""
                return grpc.StatusCode.OK, ""
        finally:
            await server.stop(None)

    code, details = asyncio.run(scenario())
    assert code == PD and "not in the access table" in details


# ---- scenario 18 ------------------------------------------------------------------------------
def _samples(plane: dict[str, Any], add_model: Path) -> dict[str, Any]:
    """A real request for each mutating method: each would change the state if allowed."""
    node = agent_pb2.NodeInfo(node_id="intruder-node", capacity=common_pb2.NodeCapacity(cpus=4))
    return {
        "/modelfleet.v1.ModelRegistry/UploadModel": [
            models_pb2.UploadModelRequest(metadata=models_pb2.UploadModelMetadata(model_id="intruder", format=common_pb2.MODEL_FORMAT_ONNX)),
            models_pb2.UploadModelRequest(chunk=add_model.read_bytes()),
        ],
        "/modelfleet.v1.ModelRegistry/DeleteModel": models_pb2.DeleteModelRequest(model_id="spare"),
        "/modelfleet.v1.Deployments/StartDeployment": dpb.StartDeploymentRequest(
            model_id="add", deployment_id="intruder", wait_for=dpb.WAIT_FOR_STARTING),
        "/modelfleet.v1.Deployments/UpdateDeployment": dpb.UpdateDeploymentRequest(
            deployment_id="add", spec=dpb.StartDeploymentRequest(description="changed"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"])),
        "/modelfleet.v1.Nodes/DrainNode": nodes_pb2.DrainNodeRequest(node_id="node-x"),
        "/modelfleet.v1.Nodes/UncordonNode": nodes_pb2.UncordonNodeRequest(node_id="node-x"),
        "/modelfleet.v1.AgentControl/Connect": [agent_pb2.AgentMessage(register=agent_pb2.RegisterNode(node=node))],
        "/modelfleet.v1.Auth/CreateApiKey": auth_pb2.CreateApiKeyRequest(roles=["admin"], name="intruder"),
        "/modelfleet.v1.Auth/RevokeApiKey": auth_pb2.RevokeApiKeyRequest(key_id=plane["keys"]["spare"].api_key.key_id),
        "/modelfleet.v1.Deployments/StopDeployment": dpb.StopDeploymentRequest(deployment_id="add"),
        "/modelfleet.v1.Deployments/DeleteDeployment": dpb.DeleteDeploymentRequest(deployment_id="add"),
    }  # fmt: skip


def test_scenario_18_every_mutating_rpc_is_denied_to_viewer_and_inference_keys(add_model: Path, tmp_path: Path) -> None:
    with make_plane(tmp_path, add_model) as plane:  # its own: the admin's calls at the end change it
        _scenario_18(plane, add_model)


def _scenario_18(plane: dict[str, Any], add_model: Path) -> None:
    c: Cluster = plane["cluster"]
    services = served_services(c.addr)
    mutating = mutating_methods(services)
    names = [full_name(s, m) for s, m in mutating]
    assert len(names) >= 11 and "/modelfleet.v1.Deployments/StartDeployment" in names, names
    samples = _samples(plane, add_model)
    before = snapshot(c)
    calls = 0
    for role in ("viewer", "inference"):
        with authed_channel(c.addr, _token(plane, role)) as channel:
            for service, method in mutating:
                code = invoke(channel, service, method, samples.get(full_name(service, method)))
                assert code == PD, (role, full_name(service, method), code)
                assert snapshot(c) == before, (role, full_name(service, method))
                calls += 1
            # and every other method the role's privileges do not grant
            granted = ROLES[role]
            for service, method in methods_of(services):
                rule = METHOD_ACCESS[full_name(service, method)]
                if rule.public or not rule.any_of or rule.any_of & granted:
                    continue
                assert invoke(channel, service, method, samples.get(full_name(service, method))) == PD
                calls += 1
    assert snapshot(c) == before
    # no key, a revoked key and an expired key: UNAUTHENTICATED for every non-public method
    wait_until(lambda: _whoami_code(c.addr, _token(plane, "expired")) == UNAUTH, timeout=10, what="the key to expire")
    for label, token in (("no key", ""), ("revoked", _token(plane, "revoked")), ("expired", _token(plane, "expired"))):
        with authed_channel(c.addr, token) as channel:
            for service, method in methods_of(services):
                if METHOD_ACCESS[full_name(service, method)].public:
                    continue
                code = invoke(channel, service, method, samples.get(full_name(service, method)), timeout=5)
                assert code == UNAUTH, (label, full_name(service, method), code)
                calls += 1
    assert snapshot(c) == before
    # the same requests with the admin key are not refused: they were real
    with authed_channel(c.addr, c.token) as channel:
        outcomes = {full_name(s, m): invoke(channel, s, m, samples.get(full_name(s, m))) for s, m in mutating}
    assert not [m for m, code in outcomes.items() if code in (PD, UNAUTH)], outcomes
    assert snapshot(c) != before
    print(f"scenario 18: {len(names)} mutating methods, {calls} refused calls, state unchanged; admin: "
          + ", ".join(f"{m.rsplit('/', 1)[1]}={code.name}" for m, code in outcomes.items()))


def _whoami_code(address: str, token: str) -> grpc.StatusCode:
    with authed_channel(address, token) as channel:
        try:
            auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


# ---- scenario 19 ------------------------------------------------------------------------------
def _rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_scenario_19_a_key_cannot_mint_or_revoke_beyond_its_own_privileges(plane: dict[str, Any]) -> None:
    c: Cluster = plane["cluster"]
    security = c.create_key(privileges=["manage_security", "monitor"], user="sec", name="security officer")
    assert sorted(security.api_key.privileges) == ["manage_security", "monitor"]
    before = snapshot(c)
    with authed_channel(c.addr, security.token) as channel:
        auth = auth_pb2_grpc.AuthStub(channel)
        err = _rpc_error(lambda: auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(roles=["deployer"])))
        assert err.code() == PD
        assert "lacks infer, manage_deployments, manage_models" in err.details()
        for req in (auth_pb2.CreateApiKeyRequest(roles=["admin"]), auth_pb2.CreateApiKeyRequest(privileges=["agent"]),
                    auth_pb2.CreateApiKeyRequest(roles=["viewer"], privileges=["infer"])):  # fmt: skip
            assert _rpc_error(lambda: auth.CreateApiKey(req)).code() == PD  # noqa: B023
        admin_key = auth.WhoAmI(auth_pb2.WhoAmIRequest())  # itself
        err = _rpc_error(lambda: auth.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=_admin_key_id(c))))
        assert err.code() == PD and "holds privileges the caller lacks" in err.details()
        assert snapshot(c) == before  # nothing was created or revoked
        # within its privileges it may act
        viewer = auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(roles=["viewer"], name="made by sec"))
        assert viewer.api_key.user == "sec" and viewer.api_key.created_by == admin_key.api_key.key_id
        assert auth.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=viewer.api_key.key_id)).api_key.HasField("revoked_at")
    # a key that expires cannot mint one that outlives it
    short = c.create_key("admin", ttl={"seconds": 3600})
    with authed_channel(c.addr, short.token) as channel:
        auth = auth_pb2_grpc.AuthStub(channel)
        err = _rpc_error(lambda: auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(roles=["viewer"])))
        assert err.code() == PD and "outlive" in err.details()
        assert auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(roles=["viewer"], ttl={"seconds": 60})).api_key.active
    # without manage_security nobody mints at all
    with authed_channel(c.addr, _token(plane, "deployer")) as channel:
        err = _rpc_error(lambda: auth_pb2_grpc.AuthStub(channel).CreateApiKey(auth_pb2.CreateApiKeyRequest(roles=["viewer"])))
        assert err.code() == PD and "manage_security" in err.details()


def _admin_key_id(c: Cluster) -> str:
    return str(auth_pb2_grpc.AuthStub(c.channel).WhoAmI(auth_pb2.WhoAmIRequest()).api_key.key_id)


def test_bad_key_requests_name_the_field(plane: dict[str, Any]) -> None:
    auth = auth_pb2_grpc.AuthStub(plane["cluster"].channel)
    cases = [
        (auth_pb2.CreateApiKeyRequest(), "at least one role"),
        (auth_pb2.CreateApiKeyRequest(roles=["root"]), "roles[0] 'root' is not a role"),
        (auth_pb2.CreateApiKeyRequest(privileges=["sudo"]), "privileges[0] 'sudo' is not a privilege"),
        (auth_pb2.CreateApiKeyRequest(roles=["viewer"], user="bad user"), "user 'bad user' is invalid"),
        (auth_pb2.CreateApiKeyRequest(roles=["viewer"], ttl={"seconds": -1}), "ttl must be"),
        (auth_pb2.CreateApiKeyRequest(roles=["viewer"], node_id="node-x"), "node_id binds an agent key"),
    ]
    for req, words in cases:
        err = _rpc_error(lambda: auth.CreateApiKey(req))  # noqa: B023
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.details(), (req, err.details())
    err = _rpc_error(lambda: auth.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id="0123456789abcdef")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    with authed_channel(plane["cluster"].addr, "mfk_0123456789abcdef_" + "A" * 43) as channel:
        err = _rpc_error(lambda: auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest()))
        assert err.code() == UNAUTH and err.details() == "invalid API key"
    with authed_channel(plane["cluster"].addr, "not-a-key") as channel:
        assert _rpc_error(lambda: auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest())).code() == UNAUTH
    # a right key id with a wrong secret is refused too
    key_id = plane["keys"]["viewer"].api_key.key_id
    with authed_channel(plane["cluster"].addr, f"mfk_{key_id}_" + "B" * 43) as channel:
        assert _rpc_error(lambda: auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest())).code() == UNAUTH


# ---- scenario 20 ------------------------------------------------------------------------------
def test_scenario_20_an_agent_acts_only_for_its_own_node_and_stale_reports_change_nothing(
    plane: dict[str, Any],
) -> None:
    c: Cluster = plane["cluster"]
    node_x: FakeAgent = plane["agents"][0]
    key_y = c.create_key("agent", name="node-y agent")
    node_y = FakeAgent(c.addr, key_y.token, "node-y")
    plane["agents"].append(node_y)
    node_y.wait_for("welcome")
    # the agent keys are now bound to their nodes (on first registration)
    keys = {k.key_id: k for k in auth_pb2_grpc.AuthStub(c.channel).ListApiKeys(auth_pb2.ListApiKeysRequest()).api_keys}
    assert keys[plane["keys"]["agent"].api_key.key_id].node_id == "node-x"
    assert keys[key_y.api_key.key_id].node_id == "node-y"
    wait_until(lambda: set(c.routes("add")) == {"node-x", "node-y"}, timeout=20, what="add placed on both nodes")
    before = snapshot(c)
    # impersonation: node-x's key registering as node-y, and a fresh agent key taking node-x
    impostor = FakeAgent(c.addr, _token(plane, "agent"), "node-y")
    assert impostor.ended.wait(10) and impostor.error is not None and impostor.error.code() == PD
    assert "may act only for node node-x, not for node node-y" in impostor.error.details()
    fresh = c.create_key("agent", name="fresh agent")
    taker = FakeAgent(c.addr, fresh.token, "node-x")
    assert taker.ended.wait(10) and taker.error is not None and taker.error.code() == PD
    assert "node node-x belongs to the agent of API key" in taker.error.details()
    assert not node_x.ended.is_set() and not node_y.ended.is_set()  # the real streams were not displaced
    assert snapshot(c)["nodes"] == before["nodes"]
    # stale and forged reports: node-x reports node-y's allocation and an unknown one as STARTED
    table = c.get("add").allocations[0].routing_table
    forged = [
        agent_pb2.AllocationReport(allocation_id=table["node-y"].allocation_id, deployment_id="add",
                                   routing_state=common_pb2.ROUTING_STATE_STARTED, worker_address="10.6.6.6:1"),
        agent_pb2.AllocationReport(allocation_id="ghost-1", deployment_id="add",
                                   routing_state=common_pb2.ROUTING_STATE_STARTED, worker_address="10.6.6.6:2"),
    ]  # fmt: skip
    generation = node_x.assignment().generation
    node_x.report(forged, generation=generation)
    # a report of its own is applied after the forged one: when it shows, the forged one was handled
    own = agent_pb2.AllocationReport(allocation_id=table["node-x"].allocation_id, deployment_id="add",
                                     routing_state=common_pb2.ROUTING_STATE_STARTING, reason="loading")  # fmt: skip
    node_x.report([own], generation=generation)
    wait_until(lambda: c.get("add").allocations[0].routing_table["node-x"].reason == "loading", timeout=10,
               what="node-x's own report")  # fmt: skip
    after = c.get("add").allocations[0].routing_table
    assert after["node-y"].routing_state == common_pb2.ROUTING_STATE_STARTING and not after["node-y"].worker_address
    assert set(after) == {"node-x", "node-y"}
    # STARTED for a removed allocation: stop `temp`, let node-x apply it, then report it STARTED again
    c.deployments.StartDeployment(dpb.StartDeploymentRequest(model_id="add", deployment_id="temp", instances=1,
                                                              wait_for=dpb.WAIT_FOR_STARTING), timeout=30)  # fmt: skip
    (entry,) = c.get("temp").allocations[0].routing_table.items()
    agent = node_x if entry[0] == "node-x" else node_y

    def assigned(with_temp: bool, after: int = 0) -> int:
        for message in reversed(agent.of_kind("assignment")):
            has = any(a.allocation_id == entry[1].allocation_id for a in message.assignment.allocations)
            if has == with_temp and message.assignment.generation > after:
                return int(message.assignment.generation)
        return 0

    start_generation = wait_until(lambda: assigned(True), what="temp assigned")
    c.deployments.StopDeployment(dpb.StopDeploymentRequest(deployment_id="temp"))
    wait_until(lambda: assigned(False, after=start_generation), what="the stop assigned")
    stop_generation = agent.assignment().generation  # the newest: everything up to it is applied
    agent.report([], generation=stop_generation)
    wait_until(lambda: c.get("temp").status == common_pb2.DEPLOYMENT_STATUS_STOPPED, timeout=10, what="temp stopped")
    stopped = c.get("temp")
    own_add = c.get("add").allocations[0].routing_table[agent.node_id].allocation_id
    agent.report([
        agent_pb2.AllocationReport(allocation_id=entry[1].allocation_id, deployment_id="temp",
                                   routing_state=common_pb2.ROUTING_STATE_STARTED, worker_address="10.6.6.6:3"),
        agent_pb2.AllocationReport(allocation_id=own_add, deployment_id="add",
                                   routing_state=common_pb2.ROUTING_STATE_STARTING, reason="after the stale one"),
    ], generation=stop_generation)  # fmt: skip
    wait_until(lambda: c.get("add").allocations[0].routing_table[agent.node_id].reason == "after the stale one",
               timeout=10, what="the report to be applied")  # fmt: skip
    assert c.get("temp").status == common_pb2.DEPLOYMENT_STATUS_STOPPED
    assert c.get("temp").allocations[0].routing_table == stopped.allocations[0].routing_table
    # revoking an agent's key closes its stream, and it cannot come back with it
    auth_pb2_grpc.AuthStub(c.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=key_y.api_key.key_id))
    assert node_y.ended.wait(10), "the stream of a revoked agent key stays open"
    again = FakeAgent(c.addr, key_y.token, "node-y")
    plane["agents"].append(again)
    assert again.ended.wait(10) and again.error is not None and again.error.code() == UNAUTH
    print("scenario 20: impersonation refused (2 attempts), 3 forged/stale reports ignored, state unchanged; "
          "a revoked agent key's stream closed")


# ---- identity, bootstrap, auth off ----------------------------------------------------------
def test_quota_owner_is_the_keys_user_and_bootstrap_key_is_private(plane: dict[str, Any]) -> None:
    c: Cluster = plane["cluster"]
    alice = c.create_key("deployer", user="alice")
    with authed_channel(c.addr, alice.token) as channel:
        from modelfleet.v1 import deployments_pb2_grpc

        stub = deployments_pb2_grpc.DeploymentsStub(channel)
        resp = stub.StartDeployment(dpb.StartDeploymentRequest(model_id="spare", wait_for=dpb.WAIT_FOR_STARTING,
                                                               instances=1), timeout=30)  # fmt: skip
        assert resp.deployment.owner == "alice"
        # x-modelfleet-user is no identity when authentication is on
        again = stub.GetDeployment(dpb.GetDeploymentRequest(deployment_id="spare"), metadata=(("x-modelfleet-user", "eve"),))
        assert again.owner == "alice"
    key_file = c.root / "cp" / "admin.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip() == c.token
    # stdout is a log file, not a terminal: the path is printed, never the key
    assert c.cp is not None and c.token not in c.cp.log() and str(key_file) in c.cp.log()
    assert "admin" in ROLES and _admin_key_id(c) in c.token


def test_auth_off_is_refused_on_a_non_loopback_address(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "control_plane.main", "--listen", "0.0.0.0:0", "--auth", "off", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "--auth off is refused on a non-loopback address (0.0.0.0:0)" in done.stderr
    assert not (tmp_path / "endpoint").exists()


def test_auth_off_on_loopback_serves_everyone_and_x_modelfleet_user_names_the_owner(tmp_path: Path) -> None:
    c = Cluster(tmp_path, auth=False)
    try:
        c.start_control_plane()
        assert not (tmp_path / "cp" / "admin.key").exists()
        who = auth_pb2_grpc.AuthStub(c.channel).WhoAmI(auth_pb2.WhoAmIRequest(), metadata=(("x-modelfleet-user", "bob"),))
        assert (who.user, who.authentication_enabled) == ("bob", False)
        assert "authentication is OFF" in c.cp.log()  # type: ignore[union-attr]
    finally:
        c.close()


# ---- workers ------------------------------------------------------------------------------------
def test_workers_accept_only_the_gateway_and_keys_with_infer(tmp_path: Path, add_model: Path) -> None:
    c = Cluster(tmp_path)
    try:
        c.start_control_plane()
        c.start_agent("node-a")
        c.wait_nodes(1)
        c.upload(add_model, "add")
        req = dpb.StartDeploymentRequest(model_id="add", wait_for=dpb.WAIT_FOR_STARTED)
        req.timeout.FromSeconds(60)
        (entry,) = c.deployments.StartDeployment(req, timeout=90).allocation.routing_table.values()
        worker = entry.worker_address
        keys = {role: c.create_key(role).token for role in ("inference", "deployer")}
        viewer = c.create_key("viewer").token
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        infer = v2.ModelInferRequest(model_name="add")
        infer.inputs.add(name="x", datatype="FP32", shape=[2, 4])
        infer.raw_input_contents.append(x.tobytes())

        def call(address: str, token: str, method: str = "infer") -> grpc.StatusCode:
            with authed_channel(address, token) as channel:
                try:
                    if method == "infer":
                        v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer, timeout=10)
                    elif method == "stats":
                        worker_pb2_grpc.WorkerControlStub(channel).GetWorkerStats(worker_pb2.GetWorkerStatsRequest(), timeout=10)
                    else:
                        worker_pb2_grpc.WorkerControlStub(channel).Drain(worker_pb2.DrainRequest(), timeout=10)
                except grpc.RpcError as exc:
                    return exc.code()
            return grpc.StatusCode.OK

        OK = grpc.StatusCode.OK
        created = time.monotonic()  # new keys reach the workers with the next verifier set
        for token in keys.values():
            wait_until(lambda: call(worker, token) == OK, timeout=10, what="a new key to reach the worker")  # noqa: B023
        print(f"new keys usable at the worker after {time.monotonic() - created:.2f} s")
        assert call(worker, "") == UNAUTH
        assert call(worker, viewer) == UNAUTH  # a valid key, but without infer
        assert call(worker, "mfk_0123456789abcdef_" + "A" * 43) == UNAUTH
        assert call(worker, keys["inference"]) == OK and call(worker, keys["deployer"]) == OK and call(worker, c.token) == OK
        assert call(worker, keys["inference"], "stats") == PD and call(worker, c.token, "drain") == PD  # agent only
        with grpc.insecure_channel(worker) as channel:  # probes stay public
            assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
            assert v2_grpc.GRPCInferenceServiceStub(channel).ServerLive(v2.ServerLiveRequest(), timeout=10).live
        # the gateway presents the worker token; the caller needs infer at the gateway
        assert call(c.addr, keys["inference"]) == OK and call(c.addr, viewer) == PD
        # the agent's statistics calls (worker token) keep flowing
        wait_until(lambda: c.deployments.GetDeploymentStats(dpb.GetDeploymentStatsRequest(deployment_id="add")).total.inference_count >= 4,
                   timeout=15, what="inference counts from the agent's stats calls")  # fmt: skip
        # a revoked key stops working at the worker too, as soon as the new verifiers arrive
        inference_id = keys["inference"].split("_")[1]
        revoked_at = time.monotonic()
        auth_pb2_grpc.AuthStub(c.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=inference_id))
        wait_until(lambda: call(worker, keys["inference"]) == UNAUTH, timeout=10, what="revocation at the worker")
        print(f"revocation reached the worker in {time.monotonic() - revoked_at:.2f} s")
        assert call(worker, keys["deployer"]) == OK
    finally:
        c.close()


def test_cli_keys_create_list_whoami_revoke(plane: dict[str, Any]) -> None:
    c: Cluster = plane["cluster"]

    def cli(*args: str, token: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MODELFLEET_TOKEN": token, "MODELFLEET_ADDR": c.addr}
        return subprocess.run([sys.executable, "-m", "modelfleet.cli.main", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    made = cli("keys", "create", "--role", "inference", "--user", "app", "--ttl", "1d", "--token-only", token=c.token)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("mfk_") and len(made.stdout.splitlines()) == 1
    who = cli("keys", "whoami", token=token)
    assert who.returncode == 0 and "user:        app" in who.stdout and "privileges:  infer" in who.stdout
    key_id = token.split("_")[1]
    listed = cli("keys", "list", "--user", "app", token=c.token)
    assert key_id in listed.stdout and "inference" in listed.stdout and token not in listed.stdout
    denied = cli("keys", "list", token=token)
    assert denied.returncode == 1 and denied.stderr.startswith("error: PERMISSION_DENIED")
    assert cli("keys", "revoke", key_id, token=c.token).returncode == 0
    gone = cli("keys", "whoami", token=token)
    assert gone.returncode == 1 and "UNAUTHENTICATED" in gone.stderr and "was revoked" in gone.stderr


def test_a_key_for_any_node_may_register_several_nodes(plane: dict[str, Any]) -> None:
    c: Cluster = plane["cluster"]
    shared = c.create_key("agent", node_id="*", name="daemonset")
    agents = [FakeAgent(c.addr, shared.token, f"ds-{i}") for i in range(2)]
    plane["agents"].extend(agents)
    for agent in agents:
        agent.wait_for("welcome")
    keys = auth_pb2_grpc.AuthStub(c.channel).ListApiKeys(auth_pb2.ListApiKeysRequest()).api_keys
    assert next(k for k in keys if k.key_id == shared.api_key.key_id).node_id == "*"
