"""The control plane's API side of leadership (control_plane.leader):

- `LeaderGate`, a server interceptor: while this replica does not lead, the
  calls that need the leader are refused with UNAVAILABLE "not the leader;
  the leader is at ADDR" and ADDR in the trailing metadata
  `modelfleet-leader` (control_plane.errors.NotLeader). Refused, not
  forwarded: a client given several addresses goes to the leader itself, and
  a standby never holds a mutation it cannot commit. The gate runs before
  authentication, so a key created on the leader since this standby last
  read the keys cannot turn a redirection into UNAUTHENTICATED (an agent
  would stop for good). Needing the leader: every method that changes
  state (access.METHOD_ACCESS's mutating rules), the agent stream, the
  gateways' routes watch and stats, and model downloads (the model files
  live on the leader's disk).
- `ControlPlanesServicer`: ListControlPlanes, answered by any replica from
  the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from control_plane.auth.access import METHOD_ACCESS
from control_plane.leader import Leadership
from modelfleet import rpc
from modelfleet.v1 import controlplanes_pb2 as cpb
from modelfleet.v1 import controlplanes_pb2_grpc

_V1 = "/modelfleet.v1"
LEADER_ONLY = frozenset(
    {method for method, rule in METHOD_ACCESS.items() if rule.mutating}
    | {f"{_V1}.AgentControl/Connect", f"{_V1}.Gateways/WatchRoutes", f"{_V1}.Gateways/ReportGatewayStats",
       f"{_V1}.ModelRegistry/DownloadModel"}
)  # fmt: skip


class LeaderGate(grpc.aio.ServerInterceptor):
    """Refuses LEADER_ONLY methods while `leadership` does not lead (see the module docstring)."""

    def __init__(self, leadership: Leadership) -> None:
        self._leadership = leadership

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method not in LEADER_ONLY or self._leadership.is_leader:
            return handler
        error = self._leadership.refusal(method.rsplit("/", 1)[-1])

        def unary(fn: Callable[..., Awaitable[Any]], kind: rpc.RpcKind) -> Callable[..., Awaitable[Any]]:
            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
                raise error

            return refuse

        def streaming(fn: Callable[..., Any], kind: rpc.RpcKind) -> Callable[..., Any]:
            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                raise error
                yield  # an async generator, like the handler it stands in for

            return refuse

        return rpc.wrap_handler(handler, coroutine=unary, generator=streaming)


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def describe(leadership: Leadership) -> cpb.ListControlPlanesResponse:
    """The replicas and the lease as the database has them now."""
    reply = cpb.ListControlPlanesResponse(answered_by=leadership.replica_id, replicated=leadership.replicated)
    lease = leadership.read_lease()
    if lease is None:  # one control plane, no lease
        reply.leader_id = leadership.replica_id
        reply.leader_address = leadership.address
        reply.replicas.add(replica_id=leadership.replica_id, address=leadership.address, role=cpb.REPLICA_ROLE_LEADER)
        return reply
    live = lease.live
    reply.epoch = lease.epoch
    reply.database_time.CopyFrom(_timestamp(lease.now))
    if live:
        reply.leader_id, reply.leader_address = lease.holder, lease.address
        reply.lease_expires_at.CopyFrom(_timestamp(lease.expires_at))
    fresh = [r for r in leadership.replicas() if (lease.now - r.seen_at).total_seconds() <= 2 * leadership.ttl_s]
    fresh.sort(key=lambda r: (not (live and r.holder == lease.holder), r.holder))
    for r in fresh:
        role = cpb.REPLICA_ROLE_LEADER if live and r.holder == lease.holder else cpb.REPLICA_ROLE_STANDBY
        reply.replicas.add(replica_id=r.holder, address=r.address, role=role, started_at=_timestamp(r.started_at),
                           last_seen=_timestamp(r.seen_at))  # fmt: skip
    return reply


class ControlPlanesServicer(controlplanes_pb2_grpc.ControlPlanesServicer):
    def __init__(self, leadership: Leadership) -> None:
        self.leadership = leadership

    async def ListControlPlanes(self, request: cpb.ListControlPlanesRequest, context: Any) -> cpb.ListControlPlanesResponse:
        return describe(self.leadership)
