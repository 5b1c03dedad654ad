"""The worker's grpc.aio server: services, options, health, reflection, and
the interceptors.

`modelfleet.rpc.ErrorMapping` (the control plane's too) wraps every handler
(outermost): a `WorkerError` aborts with the status its `code` names, its
message and its trailers; any other exception is logged with its traceback
and answered INTERNAL "internal error"; an undecodable request message is
INVALID_ARGUMENT; the final status of each ModelInfer call goes to the
per-status request counter. `WorkerAccess` (node_agent.worker.access), when
the worker runs with a token, refuses callers that are neither the
gateway/agent nor an API key with `infer`. Health reports SERVING for "", the inference service and
WorkerControl while the worker serves, NOT_SERVING from the moment it drains
(`enter_graceful_shutdown`, so nothing flips it back). Runs on the asyncio
loop; the server is bound before anyone learns the port.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from modelfleet import rpc
from modelfleet.inference import grpc_service_pb2, grpc_service_pb2_grpc
from modelfleet.v1 import worker_pb2, worker_pb2_grpc
from node_agent.worker.access import WorkerAccess
from node_agent.worker.service import WorkerService, WorkerState
from node_agent.worker.servicer import InferenceServicer, WorkerControlServicer

logger = logging.getLogger(__name__)

INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
CONTROL_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["WorkerControl"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_HEALTH_NAMES = ("", INFERENCE_SERVICE, CONTROL_SERVICE)
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


INFER_METHOD = f"/{INFERENCE_SERVICE}/ModelInfer"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def build_server(
    service: WorkerService,
    *,
    host: str,
    port: int,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    drain_timeout: float,
    access: WorkerAccess | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Create and bind (not start) the worker's server.

    Args:
        service: the worker; health follows its state.
        host, port: where to listen; port 0 = any free port.
        max_message_bytes: receive and send limit of one message.
        drain_timeout: the Drain RPC's timeout when the request gives none.
        access: who may call (None: anyone; see node_agent.worker.access).
        credentials: TLS server credentials (None: plaintext).

    Returns:
        The server and the port it bound.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    server = grpc.aio.server(
        interceptors=[
            rpc.ErrorMapping(logger=logger, on_status={INFER_METHOD: service.stats.record_status}),
            *([access] if access is not None else []),
        ],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),  # never share a port with another worker
            # the gateway pings every second to notice a silent host (control_plane.gateway.channels)
            ("grpc.http2.min_ping_interval_without_data_ms", 500),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_ping_strikes", 0),
        ],
    )
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    worker_pb2_grpc.add_WorkerControlServicer_to_server(
        WorkerControlServicer(service, default_drain_timeout=drain_timeout), server
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (INFERENCE_SERVICE, CONTROL_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )

    async def report_health(state: WorkerState) -> None:
        if state is WorkerState.SERVING:
            for name in _HEALTH_NAMES:
                await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        elif state in (WorkerState.DRAINING, WorkerState.STOPPED):
            await health.enter_graceful_shutdown()  # every name NOT_SERVING, for good

    service.add_listener(report_health)
    address = _address(host, port)
    bound = server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    if not bound:
        raise RuntimeError(f"cannot listen on {_address(host, port)}")
    return server, bound
