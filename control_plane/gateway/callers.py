"""Who may call a standalone gateway: API keys checked against the key
verifiers streamed on the routes watch, with no call to the control plane.

A key is accepted when its verifier is in the latest set (the active keys
with `infer`: the same set workers accept) and the PBKDF2 of its secret
matches. A verified token is remembered by its SHA-256 (never the token),
but every call still looks its key id up in the current set, so a key
revoked at the control plane is refused here as soon as the next update
arrives. Probes (ServerLive/ServerReady/ServerMetadata, health, reflection)
are public; a method missing from `GATEWAY_ACCESS` is denied. With no
verifiers ever received and `require` false (the control plane runs with
auth off) every caller is accepted.

Event-loop only; the PBKDF2 of a token not seen before runs in a thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from control_plane.errors import PermissionDenied, Unauthenticated
from modelfleet import keycheck, rpc
from modelfleet.v1 import agent_pb2

_V2 = "/inference.GRPCInferenceService"
PUBLIC = frozenset({
    f"{_V2}/ServerLive", f"{_V2}/ServerReady", f"{_V2}/ServerMetadata",
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
})  # fmt: skip
CALLERS = frozenset(f"{_V2}/{m}" for m in (
    "ModelReady", "ModelMetadata", "ModelInfer", "ModelStreamInfer", "ModelStatistics", "RepositoryIndex", "ModelConfig",
))  # fmt: skip


def bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


class Verifiers:
    """The current key verifiers and the check of a bearer token against them."""

    def __init__(self) -> None:
        self.keys: dict[str, agent_pb2.KeyVerifier] | None = None  # None: none received yet
        self._verified = keycheck.VerifiedTokens()

    def replace(self, creds: agent_pb2.InferenceCredentials) -> None:
        self.keys = {k.key_id: k for k in creds.keys}

    async def check(self, token: str, *, method: str) -> None:
        """Raise Unauthenticated unless token is a current key with infer."""
        if not token:
            raise Unauthenticated(f"{method} needs credentials: send 'authorization: Bearer <api key>'")
        match = keycheck.TOKEN.match(token)
        if match is None:
            raise Unauthenticated("malformed API key: expected mfk_<key id>_<secret>")
        key_id, secret = match.groups()
        verifier = (self.keys or {}).get(key_id)
        if verifier is None:
            raise Unauthenticated(f"API key {key_id} may not call this gateway: it is unknown, revoked or lacks infer")
        if not await self._verified.secret_matches(token, key_id=key_id, secret=secret, verifier=verifier):
            raise Unauthenticated("invalid API key")
        if keycheck.expired(verifier):
            raise Unauthenticated(f"API key {key_id} has expired")


class GatewayAccess(grpc.aio.ServerInterceptor):
    """Authenticates every non-public call from `verifiers` (see the module docstring)."""

    def __init__(self, verifiers: Verifiers, *, require: Callable[[], bool]) -> None:
        self._verifiers = verifiers
        self._require = require  # whether keys are checked (the control plane runs with auth on)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = details.method
        if handler is None or method in PUBLIC:
            return handler
        try:
            if method not in CALLERS:
                raise PermissionDenied(f"method {method} is not in the gateway's access table; denied")
            if self._require():
                await self._verifiers.check(bearer(details.invocation_metadata), method=method)
        except (Unauthenticated, PermissionDenied) as exc:
            return _refusing(handler, exc)
        return handler


def _refusing(handler: grpc.RpcMethodHandler, error: Exception) -> grpc.RpcMethodHandler:
    """A stand-in of the handler's kind that raises error (mapped to a status by ErrorMapping)."""

    async def refuse(request: Any, context: Any) -> Any:
        raise error

    def stand_in(fn: Callable[..., Any], kind: rpc.RpcKind) -> Callable[..., Any]:
        return refuse

    return rpc.wrap_handler(handler, coroutine=stand_in, generator=stand_in)
