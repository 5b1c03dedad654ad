"""Who may call this worker: its access table and the interceptor that
enforces it (see node_agent/worker_security.py for the whole design).

When the worker is started with `--token-file` (its allocation's worker
token, from the control plane through the agent), every call but the
public probes must present `authorization: Bearer <credential>` where the
credential is either

- the worker token: the control plane's gateway and this node's agent, or
- an API key with the `infer` privilege, checked against the verifiers in
  `--credentials-file` (PBKDF2 hashes the control plane sends to agents;
  the file is reread when it changes, so a revoked key stops working here
  within moments of the agent receiving the new set).

WorkerControl (statistics, drain) takes only the worker token. Like the
control plane's table, a method missing from `WORKER_ACCESS` is denied.
Without `--token-file` (the control plane runs with auth off, or the worker
runs alone) every caller is accepted.

Concurrency: the interceptor runs on the event loop; the PBKDF2 of a key
not seen before runs in a thread, and a verified key is remembered by the
SHA-256 of its token (never the token).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from modelfleet import keycheck, rpc
from modelfleet.v1 import agent_pb2
from node_agent.worker.errors import PermissionDenied, Unauthenticated

logger = logging.getLogger(__name__)

PUBLIC = "public"  # no credentials (probes, health, reflection)
CALLERS = "callers"  # the worker token or an API key with `infer`
AGENT = "agent"  # the worker token only

_V2 = "/inference.GRPCInferenceService"
WORKER_ACCESS: dict[str, str] = {
    f"{_V2}/ServerLive": PUBLIC,
    f"{_V2}/ServerReady": PUBLIC,
    f"{_V2}/ServerMetadata": PUBLIC,
    f"{_V2}/ModelReady": CALLERS,
    f"{_V2}/ModelMetadata": CALLERS,
    f"{_V2}/ModelInfer": CALLERS,
    f"{_V2}/ModelStreamInfer": CALLERS,
    f"{_V2}/ModelStatistics": CALLERS,
    f"{_V2}/RepositoryIndex": CALLERS,
    f"{_V2}/ModelConfig": CALLERS,
    f"{_V2}/RepositoryModelLoad": CALLERS,
    f"{_V2}/RepositoryModelUnload": CALLERS,
    "/modelfleet.v1.WorkerControl/GetWorkerStats": AGENT,
    "/modelfleet.v1.WorkerControl/Drain": AGENT,
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
}
RELOAD_EVERY_S = 0.5


def _bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


class WorkerAccess(grpc.aio.ServerInterceptor):
    """Authenticates callers of one worker (see the module docstring).

    Args:
        worker_token: the allocation's secret.
        credentials_file: where the agent keeps the key verifiers (may not exist yet).
    """

    def __init__(self, *, worker_token: str, credentials_file: Path | None) -> None:
        self._token = worker_token.encode()
        self._file = credentials_file
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._keys: dict[str, agent_pb2.KeyVerifier] = {}
        self._verified = keycheck.VerifiedTokens()

    def _reload(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked < RELOAD_EVERY_S:
            return
        self._checked = now
        try:
            st = os.stat(self._file)
            if (st.st_mtime_ns, st.st_size) == self._stamp:
                return
            creds = agent_pb2.InferenceCredentials.FromString(self._file.read_bytes())
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return
        except Exception as exc:  # keep the last good set
            logger.warning("cannot read the credentials file %s: %s", self._file, exc)
            return
        self._stamp = (st.st_mtime_ns, st.st_size)
        self._keys = {k.key_id: k for k in creds.keys}
        logger.info("credentials version %d: %d API key(s) may call this worker", creds.version, len(self._keys))

    async def authenticate(self, token: str, *, method: str, rule: str) -> None:
        """Raise Unauthenticated / PermissionDenied unless token may call method under rule."""
        if not token:
            raise Unauthenticated(f"{method} needs credentials: send 'authorization: Bearer <api key>'")
        if hmac.compare_digest(token.encode(), self._token):
            return
        match = keycheck.TOKEN.match(token)
        if match is None:
            raise Unauthenticated("invalid credentials")
        if rule == AGENT:
            raise PermissionDenied(f"{method} is for the node agent only")
        self._reload()
        key_id, secret = match.groups()
        verifier = self._keys.get(key_id)
        if verifier is None:
            raise Unauthenticated(f"API key {key_id} may not call this worker: it is unknown, revoked or lacks infer")
        if not await self._verified.secret_matches(token, key_id=key_id, secret=secret, verifier=verifier):
            raise Unauthenticated("invalid credentials")
        if keycheck.expired(verifier):
            raise Unauthenticated(f"API key {key_id} has expired")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        rule = WORKER_ACCESS.get(method)
        if rule == PUBLIC:
            return handler
        try:
            if rule is None:
                raise PermissionDenied(f"method {method} is not in the worker's access table; denied")
            await self.authenticate(_bearer(details.invocation_metadata), method=method, rule=rule)
        except (Unauthenticated, PermissionDenied) as exc:
            return _refusing(handler, exc)
        return handler


def _refusing(handler: grpc.RpcMethodHandler, error: Exception) -> grpc.RpcMethodHandler:
    """A stand-in of the handler's kind that raises error (mapped to a status by ErrorMapping)."""

    async def refuse(request: Any, context: Any) -> Any:
        raise error

    def stand_in(fn: Callable[..., Any], kind: rpc.RpcKind) -> Callable[..., Any]:
        return refuse  # it raises before answering: a coroutine serves every kind

    return rpc.wrap_handler(handler, coroutine=stand_in, generator=stand_in)
