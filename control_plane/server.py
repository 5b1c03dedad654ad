"""Builds the control plane's grpc.aio server: options, the one interceptor
that maps domain errors to status codes, every service, health and
reflection.

Error mapping (the only place): a `control_plane.errors.ModelfleetError`
becomes its status code with its message (and trailers such as
grpc-retry-pushback-ms); an abort the handler made itself passes through;
anything else becomes INTERNAL "internal error" and its traceback is logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control_plane.errors import ModelfleetError
from modelfleet.inference import grpc_service_pb2
from modelfleet.v1 import agent_pb2, deployments_pb2, models_pb2, nodes_pb2

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    models_pb2.DESCRIPTOR.services_by_name["ModelRegistry"].full_name,
    deployments_pb2.DESCRIPTOR.services_by_name["Deployments"].full_name,
    nodes_pb2.DESCRIPTOR.services_by_name["Nodes"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentControl"].full_name,
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
]


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, ModelfleetError):
        if exc.trailers:
            context.set_trailing_metadata(tuple(exc.trailers.items()))
        await context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
    log.error("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _wrap_unary(fn: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return wrapper


def _wrap_stream(fn: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return wrapper


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler once per method (not per call: the gateway's data
    path runs through here on every inference)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, method))  # type: ignore[attr-defined,no-any-return]
    if handler.stream_unary:
        return handler._replace(stream_unary=_wrap_unary(handler.stream_unary, method))  # type: ignore[attr-defined,no-any-return]
    if handler.unary_stream:
        return handler._replace(unary_stream=_wrap_stream(handler.unary_stream, method))  # type: ignore[attr-defined,no-any-return]
    if handler.stream_stream:
        return handler._replace(stream_stream=_wrap_stream(handler.stream_stream, method))  # type: ignore[attr-defined,no-any-return]
    return handler


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # agents ping every 10 s; tolerate pings down to 5 s, 2 strikes
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]


def build_server(*, max_message_bytes: int) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()], options=server_options(max_message_bytes))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return server, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *SERVICE_NAMES]:
        await health_servicer.set(name, status)
