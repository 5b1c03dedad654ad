"""The worker's grpc.aio server: services, options, health, reflection, and
the one place where domain errors become gRPC status codes.

`ErrorMapping` wraps every unary-unary handler: a `WorkerError` aborts with
the status its `code` names, its message and its trailers; any other
exception is logged with its traceback and answered INTERNAL "internal
error". Health reports SERVING for "", the inference service and
WorkerControl while the worker serves, NOT_SERVING from the moment it drains
(`enter_graceful_shutdown`, so nothing flips it back). Runs on the asyncio
loop; the server is bound before anyone learns the port.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from modelfleet.inference import grpc_service_pb2, grpc_service_pb2_grpc
from modelfleet.v1 import worker_pb2, worker_pb2_grpc
from node_agent.worker.errors import WorkerError
from node_agent.worker.service import WorkerService, WorkerState
from node_agent.worker.servicer import InferenceServicer, WorkerControlServicer

logger = logging.getLogger(__name__)

INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
CONTROL_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["WorkerControl"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_HEALTH_NAMES = ("", INFERENCE_SERVICE, CONTROL_SERVICE)
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


INFER_METHOD = f"/{INFERENCE_SERVICE}/ModelInfer"


class ErrorMapping(grpc.aio.ServerInterceptor):
    """Maps domain errors to status codes for every unary-unary method, and
    reports the final status of each ModelInfer call to `on_infer_status`
    (for the per-status request counter)."""

    def __init__(self, on_infer_status: Callable[[str], None] | None = None) -> None:
        self._on_infer_status = on_infer_status
        # method -> (the handler the service gave, our wrapper): built once per
        # method, not per call (the profile showed the per-call rebuild)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming methods (health Watch, reflection) are not ours
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary
        report = self._on_infer_status if method == INFER_METHOD else None

        async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                reply = await inner(request, context)
            except WorkerError as exc:
                if report is not None:
                    report(exc.code)
                if exc.trailers:
                    context.set_trailing_metadata(tuple(exc.trailers.items()))
                await context.abort(grpc.StatusCode[exc.code], exc.message)
            except asyncio.CancelledError:
                if report is not None:
                    report("CANCELLED")  # the client went away or its deadline passed
                raise
            except grpc.aio.AbortError:
                raise
            except Exception:
                if report is not None:
                    report("INTERNAL")
                logger.exception("unexpected error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            if report is not None:
                report("OK")
            return reply

        return grpc.unary_unary_rpc_method_handler(
            mapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def build_server(
    service: WorkerService,
    *,
    host: str,
    port: int,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    drain_timeout: float,
) -> tuple[grpc.aio.Server, int]:
    """Create and bind (not start) the worker's server.

    Args:
        service: the worker; health follows its state.
        host, port: where to listen; port 0 = any free port.
        max_message_bytes: receive and send limit of one message.
        drain_timeout: the Drain RPC's timeout when the request gives none.

    Returns:
        The server and the port it bound.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    server = grpc.aio.server(
        interceptors=[ErrorMapping(on_infer_status=service.stats.record_status)],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),  # never share a port with another worker
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
    bound = server.add_insecure_port(_address(host, port))
    if not bound:
        raise RuntimeError(f"cannot listen on {_address(host, port)}")
    return server, bound
