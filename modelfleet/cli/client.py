"""The CLI's gRPC client: one channel to the control plane, shared by all stubs.

The channel is synchronous (a CLI runs one call at a time). When
`MODELFLEET_TOKEN` is set, an interceptor adds `authorization: Bearer <token>`
to every call, unary and streaming alike, so no command can forget it.
`format_rpc_error` is the single place that turns a failed call into the
one line the user sees.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from modelfleet.inference import grpc_service_pb2_grpc
from modelfleet.v1 import deployments_pb2_grpc, models_pb2_grpc, nodes_pb2_grpc

DEFAULT_ADDR = "127.0.0.1:7070"
# Deadline of quick unary calls (get/list/...); long calls compute their own.
DEFAULT_RPC_TIMEOUT = 30.0
_MAX_MESSAGE = 512 * 1024 * 1024

_Details = collections.namedtuple(
    "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
)


class _CallDetails(_Details, grpc.ClientCallDetails):  # type: ignore[misc]
    """A concrete ClientCallDetails (grpc only ships the abstract class)."""


class _MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Appends fixed metadata (the bearer token) to every call."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or []) + self._metadata
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
                               request_iterator: Iterator[Any]) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
                                request_iterator: Iterator[Any]) -> Any:
        return continuation(self._details(details), request_iterator)


class Client:
    """Lazily opened channel plus the stubs of every public service.

    Args:
        addr: HOST:PORT of the control plane (or any server of the API).
        token: bearer token; sent as `authorization` metadata when non-empty.
    """

    def __init__(self, addr: str, token: str | None = None) -> None:
        self.addr = addr
        self.token = token or ""
        self._channel: grpc.Channel | None = None

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            channel = grpc.insecure_channel(
                self.addr,
                options=[
                    ("grpc.max_receive_message_length", _MAX_MESSAGE),
                    ("grpc.max_send_message_length", _MAX_MESSAGE),
                ],
            )
            if self.token:
                channel = grpc.intercept_channel(
                    channel, _MetadataInterceptor([("authorization", f"Bearer {self.token}")])
                )
            self._channel = channel
        return self._channel

    @property
    def models(self) -> models_pb2_grpc.ModelRegistryStub:
        return models_pb2_grpc.ModelRegistryStub(self.channel)

    @property
    def deployments(self) -> deployments_pb2_grpc.DeploymentsStub:
        return deployments_pb2_grpc.DeploymentsStub(self.channel)

    @property
    def nodes(self) -> nodes_pb2_grpc.NodesStub:
        return nodes_pb2_grpc.NodesStub(self.channel)

    @property
    def inference(self) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
        return grpc_service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CONNECT_HINTS = ("failed to connect", "connection refused", "dns resolution failed", "errors resolving",
                  "name resolution", "lookup failed", "connect failed", "no route to host")


def is_connect_failure(err: grpc.RpcError) -> bool:
    """True when the call failed because nothing answered at the address."""
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else "") or ""
    return code == grpc.StatusCode.UNAVAILABLE and any(h in details.lower() for h in _CONNECT_HINTS)


def format_rpc_error(err: grpc.RpcError, addr: str) -> str:
    """The one line shown for a failed call: `error: <STATUS_CODE>: <details>`."""
    code = err.code() if hasattr(err, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    details = (err.details() if hasattr(err, "details") else None) or str(code or err)
    details = " ".join(details.split())
    if is_connect_failure(err):
        details = f"cannot reach the control plane at {addr} (is it running? set --addr or MODELFLEET_ADDR): {details}"
    return f"error: {name}: {details}"
