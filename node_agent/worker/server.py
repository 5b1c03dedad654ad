"""The worker's grpc.aio server: services, options, health, reflection, and
the one place where domain errors become gRPC status codes.

`ErrorMapping` wraps every handler (outermost): a `WorkerError` aborts with
the status its `code` names, its message and its trailers; any other
exception is logged with its traceback and answered INTERNAL "internal
error"; an undecodable request message is INVALID_ARGUMENT. `WorkerAccess` (node_agent.worker.access), when the worker runs
with a token, refuses callers that are neither the gateway/agent nor an
API key with `infer`. Health reports SERVING for "", the inference service and
WorkerControl while the worker serves, NOT_SERVING from the moment it drains
(`enter_graceful_shutdown`, so nothing flips it back). Runs on the asyncio
loop; the server is bound before anyone learns the port.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from modelfleet.inference import grpc_service_pb2, grpc_service_pb2_grpc
from modelfleet.v1 import worker_pb2, worker_pb2_grpc
from node_agent.worker.access import WorkerAccess
from node_agent.worker.errors import InvalidArgument, WorkerError
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
    """Maps domain errors to status codes for every method, whatever its kind,
    and reports the final status of each ModelInfer call to `on_infer_status`
    (the per-status request counter). Wrappers are built once per method and
    handler, not per call (the profile showed the per-call rebuild)."""

    def __init__(self, on_infer_status: Callable[[str], None] | None = None) -> None:
        self._on_infer_status = on_infer_status
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        report = self._on_infer_status if method == INFER_METHOD else None
        safe = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            inner = getattr(handler, kind)
            if inner is not None:
                mapped = _mapped(inner, method, streamed_requests=kind.startswith("stream"), report=report)
                return safe._replace(**{kind: mapped})
        return handler


class _Undecodable:
    """A request message that did not parse: INVALID_ARGUMENT, not grpc's UNKNOWN."""

    def __init__(self, error: Exception) -> None:
        self.error = InvalidArgument(f"malformed request message: {error}")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(exc)

    return parse


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error
        yield request


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, WorkerError):
        if exc.trailers:
            context.set_trailing_metadata(tuple(exc.trailers.items()))
        await context.abort(grpc.StatusCode[exc.code], exc.message)
    logger.error("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _mapped(
    inner: Callable[..., Any], method: str, *, streamed_requests: bool, report: Callable[[str], None] | None = None
) -> Callable[..., Any]:
    """inner with errors mapped, keeping its kind: async generator or coroutine
    (grpc.aio treats the two differently; health Watch is a coroutine). A
    coroutine's final status goes to `report` (when given)."""
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                if isinstance(request, _Undecodable):
                    raise request.error
                async for item in inner(_checked(request) if streamed_requests else request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, method)

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if isinstance(request, _Undecodable):
                raise request.error
            reply = await inner(_checked(request) if streamed_requests else request, context)
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            if report is not None:
                report("CANCELLED")  # the client went away or its deadline passed
            raise
        except Exception as exc:
            if report is not None:
                report(exc.code if isinstance(exc, WorkerError) else "INTERNAL")
            await _abort(context, exc, method)
        if report is not None:
            report("OK")
        return reply

    return call


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
            ErrorMapping(on_infer_status=service.stats.record_status),
            *([access] if access is not None else []),
        ],
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
    address = _address(host, port)
    bound = server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    if not bound:
        raise RuntimeError(f"cannot listen on {_address(host, port)}")
    return server, bound
