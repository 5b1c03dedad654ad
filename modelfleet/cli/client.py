"""The CLI's gRPC client: one channel to the control plane, shared by all stubs.

The channel is synchronous (a CLI runs one call at a time). When a token
is known (`resolve_token`: MODELFLEET_TOKEN, a token file, or for a
control plane on this machine the bootstrap admin key it wrote), an
interceptor adds `authorization: Bearer <token>` to every call, unary and
streaming alike, so no command can forget it. With `tls` the channel is
TLS (mTLS with a client certificate). `format_rpc_error` is the single place
that turns a failed call into the one line the user sees.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from modelfleet.inference import grpc_service_pb2_grpc
from modelfleet.net import is_loopback
from modelfleet.v1 import (
    auth_pb2_grpc,
    controlplanes_pb2,
    controlplanes_pb2_grpc,
    deployments_pb2_grpc,
    models_pb2_grpc,
    nodes_pb2_grpc,
)

DEFAULT_PORT = 7070
DEFAULT_ADDR = f"127.0.0.1:{DEFAULT_PORT}"
# Deadline of quick unary calls (get/list/...); long calls compute their own.
DEFAULT_RPC_TIMEOUT = 30.0
_MAX_MESSAGE = 512 * 1024 * 1024
_FIND_LEADER_TIMEOUT_S = 5.0  # per address, when several are given

_Details = collections.namedtuple(
    "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
)


class _CallDetails(_Details, grpc.ClientCallDetails):
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


def with_default_port(addr: str) -> str:
    """`addr` with the control plane's port 7070 added when it names only a host
    (`127.0.0.1`, `[::1]`, `cp.example`); gRPC would otherwise dial 443. Several
    comma-separated addresses (control-plane replicas) get it each."""
    if "," in addr:
        return ",".join(with_default_port(part) for part in addr.split(",") if part.strip())
    text = addr.strip()
    if text.startswith("["):
        return text if "]:" in text else f"{text}:{DEFAULT_PORT}"
    if text.count(":") > 1:  # a bare IPv6 address
        return f"[{text}]:{DEFAULT_PORT}"
    return text if ":" in text else f"{text}:{DEFAULT_PORT}"


# Where a control plane on this machine keeps its bootstrap admin key:
# `modelfleet up`'s default data dir, then the control plane's own default.
LOCAL_ADMIN_KEYS = (Path(".modelfleet/control-plane/admin.key"), Path("cp/admin.key"))


def resolve_token(addr: str, *, token: str | None = None, token_file: str | None = None) -> str:
    """The API key to send ("" = none); see resolve_credential."""
    return resolve_credential(addr, token=token, token_file=token_file)[0]


def resolve_credential(addr: str, *, token: str | None = None, token_file: str | None = None) -> tuple[str, str]:
    """The API key to send and where it came from (shown when it is refused).

    token (MODELFLEET_TOKEN), else token_file (MODELFLEET_TOKEN_FILE), else
    the bootstrap admin key of the control plane on this machine that answers
    at addr: $MODELFLEET_DATA_DIR/admin.key, .modelfleet/control-plane/admin.key
    or cp/admin.key, used only when the endpoint file beside it (the address
    that control plane bound) is addr, so the key of one control plane is
    never sent to another. ("", "") = none.

    Raises:
        OSError: token_file cannot be read.
    """
    if token:
        return token.strip(), "MODELFLEET_TOKEN"
    if token_file:
        return Path(token_file).read_text().strip(), f"the token file {token_file}"
    if not is_loopback(addr):
        return "", ""
    data_dir = os.environ.get("MODELFLEET_DATA_DIR")
    for path in ([Path(data_dir) / "admin.key"] if data_dir else []) + list(LOCAL_ADMIN_KEYS):
        try:
            if not same_endpoint((path.parent / "endpoint").read_text().strip(), addr):
                continue
            return path.read_text().strip(), f"the admin key file {path}"
        except OSError:
            continue
    return "", ""


_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""})


def same_endpoint(bound: str, addr: str) -> bool:
    """Does addr reach the control plane that bound `bound` (HOST:PORT) on this machine?"""
    def split(text: str) -> tuple[str, str]:
        host, _, port = with_default_port(text).rpartition(":")
        host = host.strip("[]").lower()
        return ("localhost" if host in _LOCAL_HOSTS or host.startswith("127.") else host), port

    return split(bound) == split(addr)


@dataclasses.dataclass(frozen=True)
class Tls:
    """TLS for the CLI's channel: PEM paths ("" = unset)."""

    ca: str = ""  # trust this CA (default: the system roots)
    cert: str = ""  # client certificate for mTLS
    key: str = ""
    server_name: str = ""  # check the server certificate for this name instead of the address's host

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


class Client:
    """Lazily opened channel plus the stubs of every public service.

    Args:
        addr: HOST:PORT of the control plane (or any server of the API); or
            several, comma-separated (control-plane replicas): the first that
            answers ListControlPlanes names the leader, and the client uses
            the leader if it is listed, else that first replica that answered.
        token: bearer token; sent as `authorization` metadata when non-empty.
        tls: TLS settings; None = plaintext.
    """

    def __init__(self, addr: str, token: str | None = None, tls: Tls | None = None) -> None:
        self.addrs = [a.strip() for a in addr.split(",") if a.strip()] or [addr]
        self.addr = self.addrs[0]
        self.token = token or ""
        self.tls = tls
        self._channel: grpc.Channel | None = None

    def _open(self, addr: str) -> grpc.Channel:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ]
        if self.tls is not None:
            if self.tls.server_name:
                options.append(("grpc.ssl_target_name_override", self.tls.server_name))
            channel = grpc.secure_channel(addr, self.tls.credentials(), options=options)
        else:
            channel = grpc.insecure_channel(addr, options=options)
        if self.token:
            channel = grpc.intercept_channel(channel, _MetadataInterceptor([("authorization", f"Bearer {self.token}")]))
        return channel

    def _find_leader(self) -> tuple[str, grpc.Channel]:
        """With several addresses: the leader's (if listed), else the first that answers, else the first."""
        for addr in self.addrs:
            channel = self._open(addr)
            try:
                reply = controlplanes_pb2_grpc.ControlPlanesStub(channel).ListControlPlanes(
                    controlplanes_pb2.ListControlPlanesRequest(), timeout=_FIND_LEADER_TIMEOUT_S)
            except grpc.RpcError:
                channel.close()
                continue
            if reply.leader_address in self.addrs and reply.leader_address != addr:
                channel.close()
                return reply.leader_address, self._open(reply.leader_address)
            return addr, channel
        return self.addrs[0], self._open(self.addrs[0])

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            if len(self.addrs) > 1:
                self.addr, self._channel = self._find_leader()
            else:
                self._channel = self._open(self.addr)
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
    def auth(self) -> auth_pb2_grpc.AuthStub:
        return auth_pb2_grpc.AuthStub(self.channel)

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


def format_rpc_error(err: grpc.RpcError, addr: str, *, token_source: str = "") -> str:
    """The one line shown for a failed call: `error: <STATUS_CODE>: <details>`;
    a refusal names the key sent (token_source: where it came from)."""
    code = err.code() if hasattr(err, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    details = (err.details() if hasattr(err, "details") else None) or str(code or err)
    details = " ".join(details.split())
    if is_connect_failure(err):
        details = f"cannot reach the control plane at {addr} (is it running? set --addr or MODELFLEET_ADDR): {details}"
    elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) and token_source:
        details += f" (the API key sent came from {token_source})"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        details += " (no API key was sent: set MODELFLEET_TOKEN or --token-file to an API key)"
    return f"error: {name}: {details}"
