"""Revoking an API key ends the streaming calls it opened (control_plane.auth.access.OpenCalls).

A WatchDeployment opened with a viewer key through a real control-plane
process ends with UNAUTHENTICATED "API key ... was revoked" once an admin
revokes the key; a watch opened with another key goes on receiving
snapshots. The unit tests drive OpenCalls and the access wrapper on a real
event loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cluster import Cluster, authed_channel
from fakeagent import FakeAgent
from modelbuild import onnx_add

from control_plane.auth.access import AccessInterceptor, OpenCalls, Principal
from control_plane.errors import Unauthenticated
from modelfleet.v1 import auth_pb2, auth_pb2_grpc, common_pb2
from modelfleet.v1 import deployments_pb2 as dpb
from modelfleet.v1 import deployments_pb2_grpc as dpb_grpc


class _Watch:
    """WatchDeployment in a thread; `events` gets each snapshot's status and finally the error."""

    def __init__(self, channel: grpc.Channel, deployment_id: str) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.call = dpb_grpc.DeploymentsStub(channel).WatchDeployment(dpb.WatchDeploymentRequest(deployment_id=deployment_id))
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for item in self.call:
                self.events.put(item.deployment)
        except grpc.RpcError as exc:
            self.events.put(exc)

    def next(self, timeout: float = 20) -> Any:
        return self.events.get(timeout=timeout)


@pytest.fixture()
def plane(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, heartbeat=30, node_timeout=120)
    agents: list[FakeAgent] = []
    try:
        c.start_control_plane()
        agent = FakeAgent(c.addr, c.create_key("agent").token, "node-x")
        agents.append(agent)
        agent.wait_for("welcome")
        assert c.upload(onnx_add(tmp_path / "add.onnx"), "add").state == common_pb2.MODEL_STATE_NORMAL
        c.deployments.StartDeployment(dpb.StartDeploymentRequest(model_id="add", wait_for=dpb.WAIT_FOR_STARTING), timeout=30)
        yield c
    finally:
        for a in agents:
            a.close()
        c.close()


def test_revoking_a_key_ends_its_open_watch_and_no_other(plane: Cluster) -> None:
    doomed, kept = plane.create_key("viewer", name="doomed"), plane.create_key("viewer", name="kept")
    doomed_channel, kept_channel = authed_channel(plane.addr, doomed.token), authed_channel(plane.addr, kept.token)
    try:
        doomed_watch, kept_watch = _Watch(doomed_channel, "add"), _Watch(kept_channel, "add")
        assert isinstance(doomed_watch.next(), dpb.Deployment)  # both streams are open and answering
        assert isinstance(kept_watch.next(), dpb.Deployment)

        auth_pb2_grpc.AuthStub(plane.channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=doomed.api_key.key_id))

        ended = doomed_watch.next()
        while isinstance(ended, dpb.Deployment):  # a snapshot may have been in flight
            ended = doomed_watch.next()
        assert isinstance(ended, grpc.RpcError)
        assert ended.code() == grpc.StatusCode.UNAUTHENTICATED
        assert f"API key {doomed.api_key.key_id} was revoked" in (ended.details() or "")

        # the other key's watch still delivers: a change of the deployment reaches it
        update = dpb.UpdateDeploymentRequest(deployment_id="add", spec=dpb.StartDeploymentRequest(traffic_limit_qps=5))
        update.update_mask.paths.append("traffic_limit_qps")
        plane.deployments.UpdateDeployment(update, timeout=30)
        while True:
            item = kept_watch.next()
            assert not isinstance(item, grpc.RpcError), item
            if item.traffic_limit_qps == 5:
                break
    finally:
        doomed_channel.close()
        kept_channel.close()


# ---- units on a real event loop ----------------------------------------------------------------
def test_open_calls_end_only_the_revoked_keys_tasks() -> None:
    async def scenario() -> None:
        calls = OpenCalls()
        started = asyncio.Event()
        outcomes: dict[str, str] = {}

        async def call(name: str, key_id: str) -> None:
            with calls.track(key_id) as ended:
                try:
                    started.set()
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    outcomes[name] = ended[0] if ended else "cancelled"
                    return
            outcomes[name] = "finished"

        tasks = [asyncio.create_task(call("a1", "a")), asyncio.create_task(call("a2", "a")), asyncio.create_task(call("b", "b"))]
        await started.wait()
        await asyncio.sleep(0)
        assert (calls.count("a"), calls.count("b")) == (2, 1)
        assert calls.end_key("a", "API key a was revoked") == 2
        await asyncio.wait(tasks[:2], timeout=5)
        assert outcomes == {"a1": "API key a was revoked", "a2": "API key a was revoked"}
        assert calls.count("a") == 0 and calls.count("b") == 1  # b goes on
        assert calls.end_key("nobody", "x") == 0
        tasks[2].cancel()
        await asyncio.wait(tasks[2:], timeout=5)
        assert outcomes["b"] == "cancelled" and calls.count("b") == 0

    asyncio.run(scenario())


def test_a_revoked_stream_raises_unauthenticated_and_an_ordinary_cancel_stays_a_cancel() -> None:
    class _Auth:
        async def authenticate(self, token: str) -> Principal:
            return Principal(user="u", key_id=token, roles=("viewer",), privileges=frozenset({"monitor"}))

    async def watch(request: Any, context: Any) -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(30)
        yield 2

    method = "/modelfleet.v1.Deployments/WatchDeployment"
    handler = grpc.unary_stream_rpc_method_handler(watch)

    class _Details:
        def __init__(self, token: str) -> None:
            self.method = method
            self.invocation_metadata = (("authorization", f"Bearer {token}"),)

    async def scenario() -> None:
        interceptor = AccessInterceptor(_Auth())

        async def continuation(_: Any) -> grpc.RpcMethodHandler:
            return handler

        async def consume(token: str) -> list[Any]:
            wrapped = await interceptor.intercept_service(continuation, _Details(token))
            seen: list[Any] = []
            try:
                async for item in wrapped.unary_stream(None, None):
                    seen.append(item)
            except Unauthenticated as exc:
                seen.append(str(exc))
            return seen

        revoked, other = asyncio.create_task(consume("k1")), asyncio.create_task(consume("k2"))
        for _ in range(100):
            if interceptor.open_calls.count("k1") and interceptor.open_calls.count("k2"):
                break
            await asyncio.sleep(0.01)
        interceptor.open_calls.end_key("k1", "API key k1 was revoked")
        assert await asyncio.wait_for(revoked, 5) == [1, "API key k1 was revoked"]
        other.cancel()  # the client went away: a plain cancellation, not an auth error
        with pytest.raises(asyncio.CancelledError):
            await other
        assert interceptor.open_calls.count("k2") == 0

    asyncio.run(scenario())
