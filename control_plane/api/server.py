"""Builds the control plane's grpc.aio server: options, the interceptor
that maps domain errors to status codes, the one that authenticates and
authorizes every call (control_plane.auth.access), every service, health and
reflection, and the TLS (or mTLS) server credentials.

Error mapping is modelfleet.rpc.ErrorMapping, the worker's too: a
`control_plane.errors.ModelfleetError` becomes the status its `code` names,
with its message (and trailers such as grpc-retry-pushback-ms); an abort the
handler made itself passes through; anything else becomes INTERNAL "internal
error" and its traceback is logged. A request message that does not parse is
INVALID_ARGUMENT (grpc itself would answer UNKNOWN), for every message of a
request stream too.

Message sizes (RELIABILITY.md: 4 MiB for management, more for inference):
the transport accepts up to `--max-message-bytes` (64 MiB) so that V2
inference requests through the gateway fit; every other method's request
messages (each message of a stream: uploads are chunked) are refused above
`--max-management-message-bytes` (4 MiB) with RESOURCE_EXHAUSTED naming the
limit, before they are parsed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control_plane.api.leadership import LeaderGate
from control_plane.auth.access import AccessInterceptor, Authenticator, OpenCalls
from control_plane.auth.audit import AuditLog
from control_plane.auth.throttle import FailureThrottle
from control_plane.leader import Leadership
from modelfleet import rpc
from modelfleet.inference import grpc_service_pb2
from modelfleet.v1 import agent_pb2, auth_pb2, controlplanes_pb2, deployments_pb2, gateways_pb2, models_pb2, nodes_pb2

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    models_pb2.DESCRIPTOR.services_by_name["ModelRegistry"].full_name,
    deployments_pb2.DESCRIPTOR.services_by_name["Deployments"].full_name,
    nodes_pb2.DESCRIPTOR.services_by_name["Nodes"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentControl"].full_name,
    auth_pb2.DESCRIPTOR.services_by_name["Auth"].full_name,
    gateways_pb2.DESCRIPTOR.services_by_name["Gateways"].full_name,
    controlplanes_pb2.DESCRIPTOR.services_by_name["ControlPlanes"].full_name,
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
]


DEFAULT_MANAGEMENT_MESSAGE_BYTES = 4 << 20
# methods whose requests may be as large as the transport allows (--max-message-bytes)
INFERENCE_METHODS = frozenset({"/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ModelStreamInfer"})
_MANAGEMENT_SCOPE = "management calls (--max-management-message-bytes); uploads are sent in chunks"


class ErrorMappingInterceptor(rpc.ErrorMapping):
    """modelfleet.rpc.ErrorMapping with the control plane's limit: a request message of a
    method other than ModelInfer and ModelStreamInfer over `management_limit` bytes is RESOURCE_EXHAUSTED."""

    def __init__(self, management_limit: int = DEFAULT_MANAGEMENT_MESSAGE_BYTES) -> None:
        super().__init__(
            logger=log, limit=rpc.MessageLimit(max_bytes=management_limit, scope=_MANAGEMENT_SCOPE, exempt=INFERENCE_METHODS)
        )


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive of the control plane's connections (RELIABILITY.md
    defaults): it pings every `time_s` and drops a connection whose ping is
    not answered within `timeout_s`, so a vanished agent's stream ends even
    when no packet says so; it tolerates client pings down to
    `min_ping_interval_s` apart (agents ping every 10 s) and sends GOAWAY
    after `max_ping_strikes` pings that come faster."""

    time_s: float = 10.0
    timeout_s: float = 10.0
    min_ping_interval_s: float = 5.0
    max_ping_strikes: int = 2


def server_options(max_message_bytes: int, keepalive: Keepalive | None = None) -> list[tuple[str, int]]:
    ka = keepalive or Keepalive()
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(ka.time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(ka.timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # gRPC core's GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: the fastest
        # client pings a server tolerates (the name says "min_ping", not "min_recv_ping")
        ("grpc.http2.min_ping_interval_without_data_ms", int(ka.min_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", ka.max_ping_strikes),
        ("grpc.so_reuseport", 0),
    ]


def build_server(
    *,
    max_message_bytes: int,
    authenticator: Authenticator | None = None,
    keepalive: Keepalive | None = None,
    open_calls: OpenCalls | None = None,
    max_management_message_bytes: int = DEFAULT_MANAGEMENT_MESSAGE_BYTES,
    audit: AuditLog | None = None,
    throttle: FailureThrottle | None = None,
    leadership: Leadership | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The server with every interceptor; authenticator None = authentication off.

    ErrorMappingInterceptor is outermost, so the access interceptor's
    Unauthenticated / PermissionDenied become status codes like any domain error.
    Streaming calls are registered in `open_calls` by key (revocation ends them).
    With `leadership`, the LeaderGate (next, before authentication) refuses
    what needs the leader while this replica does not lead.
    Requests of methods other than ModelInfer are limited to
    max_management_message_bytes (at most max_message_bytes, the transport's limit).
    """
    server = grpc.aio.server(
        interceptors=[
            ErrorMappingInterceptor(management_limit=min(max_management_message_bytes, max_message_bytes)),
            *([LeaderGate(leadership)] if leadership is not None else []),
            AccessInterceptor(authenticator, open_calls=open_calls, audit=audit, throttle=throttle),
        ],
        options=server_options(max_message_bytes, keepalive),
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *SERVICE_NAMES]:
        await health_servicer.set(name, status)
