"""Who may call what: privileges, built-in roles, the access table and the
one server interceptor that enforces it.

Every RPC the control plane serves has exactly one entry in
`METHOD_ACCESS`, keyed by its full method name ("/package.Service/Method").
An entry is public (health checks, reflection, V2 liveness: no credentials),
"any valid key" (WhoAmI), or a set of privileges of which the caller needs
one. A method missing from the table is denied, so a new RPC stays closed
until someone decides who may call it (tests/system/security/test_security.py checks that
every method of every served service descriptor has an entry).

`AccessInterceptor` runs inside the error-mapping interceptor: it raises
the domain errors `Unauthenticated` / `PermissionDenied` from a stand-in
handler of the method's own kind, and the error mapping turns them into
status codes like every other domain error. For an allowed call it records
the caller's `Principal` in a context variable for the handler (`caller()`,
`current_principal()`): grpc.aio runs each RPC in its own task, and the
handler runs inside the wrapper that set it.

A call that can outlive its key (any with a request or response stream:
WatchDeployment, an upload, an agent's stream) is registered in `OpenCalls`
under the key that opened it; revoking that key ends each of them with
UNAUTHENTICATED "API key ... was revoked", as a new call would be refused.

With authentication off (`--auth off`, loopback only) every call passes and
the caller's identity is the `x-modelfleet-user` metadata value (else
"default"), as before keys existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

import grpc

from control_plane.auth import throttle
from control_plane.auth.audit import AuditLog
from control_plane.auth.audit import target_of as audit_target
from control_plane.auth.throttle import FailureThrottle
from control_plane.errors import PermissionDenied, Unauthenticated
from modelfleet import rpc

log = logging.getLogger(__name__)

# ---- privileges and roles ---------------------------------------------------------------
MANAGE_DEPLOYMENTS = "manage_deployments"
MANAGE_MODELS = "manage_models"
MONITOR = "monitor"
INFER = "infer"
MANAGE_NODES = "manage_nodes"
MANAGE_SECURITY = "manage_security"
AGENT = "agent"
GATEWAY = "gateway"  # standalone gateways: the routes watch (worker tokens, key verifiers)

PRIVILEGES: frozenset[str] = frozenset(
    {MANAGE_DEPLOYMENTS, MANAGE_MODELS, MONITOR, INFER, MANAGE_NODES, MANAGE_SECURITY, AGENT, GATEWAY}
)
ROLES: dict[str, frozenset[str]] = {
    "admin": PRIVILEGES,
    "deployer": frozenset({MANAGE_DEPLOYMENTS, MANAGE_MODELS, MONITOR, INFER}),
    "viewer": frozenset({MONITOR}),
    "inference": frozenset({INFER}),
    "agent": frozenset({AGENT}),
    "gateway": frozenset({GATEWAY}),
}

DEFAULT_USER = "default"
ANONYMOUS = "anonymous"


def privileges_of(roles: Iterable[str], extra: Iterable[str] = ()) -> frozenset[str]:
    """The effective privileges of roles plus extra privileges (unknown names count for nothing)."""
    out: set[str] = set()
    for role in roles:
        out |= ROLES.get(role, frozenset())
    return frozenset(out | (set(extra) & PRIVILEGES))


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller: the API key and what it may do."""

    user: str
    key_id: str
    roles: tuple[str, ...]
    privileges: frozenset[str]
    node_id: str = ""  # agent keys: the node it is bound to ("" = not yet)
    expires_at: float | None = None  # Unix seconds; None = never
    join: bool = False  # a join token: it may only register a node (JOIN_METHOD)

    def describe(self) -> str:
        return f"API key {self.key_id} (user {self.user}, roles {', '.join(self.roles) or 'none'})"


# ---- the table ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rule:
    """public: no credentials; else a valid key holding one of any_of (empty = any valid key).
    mutating: the call changes state, so it is written to the audit log (control_plane.auth.audit)."""

    public: bool = False
    any_of: frozenset[str] = frozenset()
    mutating: bool = False


PUBLIC = Rule(public=True)
AUTHENTICATED = Rule()


def needs(*privileges: str) -> Rule:
    return Rule(any_of=frozenset(privileges))


def changes(*privileges: str) -> Rule:
    """needs(...), for a method that changes state (audited)."""
    return Rule(any_of=frozenset(privileges), mutating=True)


_V1 = "/modelfleet.v1"
_V2 = "/inference.GRPCInferenceService"
JOIN_METHOD = f"{_V1}.AgentControl/Connect"
METHOD_ACCESS: dict[str, Rule] = {
    f"{_V1}.ModelRegistry/UploadModel": changes(MANAGE_MODELS),
    f"{_V1}.ModelRegistry/GetModel": needs(MONITOR),
    f"{_V1}.ModelRegistry/ListModels": needs(MONITOR),
    f"{_V1}.ModelRegistry/DeleteModel": changes(MANAGE_MODELS),
    # agents fetch the model files they run; model bytes are not for viewers
    f"{_V1}.ModelRegistry/DownloadModel": needs(MANAGE_MODELS, AGENT),
    f"{_V1}.Deployments/StartDeployment": changes(MANAGE_DEPLOYMENTS),
    f"{_V1}.Deployments/StopDeployment": changes(MANAGE_DEPLOYMENTS),
    f"{_V1}.Deployments/UpdateDeployment": changes(MANAGE_DEPLOYMENTS),
    f"{_V1}.Deployments/DeleteDeployment": changes(MANAGE_DEPLOYMENTS),
    f"{_V1}.Deployments/GetDeployment": needs(MONITOR),
    f"{_V1}.Deployments/ListDeployments": needs(MONITOR),
    f"{_V1}.Deployments/GetDeploymentStats": needs(MONITOR),
    f"{_V1}.Deployments/WatchDeployment": needs(MONITOR),
    f"{_V1}.Deployments/ListDeploymentEvents": needs(MONITOR),
    f"{_V1}.Nodes/ListNodes": needs(MONITOR),
    f"{_V1}.Nodes/GetNode": needs(MONITOR),
    f"{_V1}.Nodes/DrainNode": changes(MANAGE_NODES),
    f"{_V1}.Nodes/UncordonNode": changes(MANAGE_NODES),
    f"{_V1}.AgentControl/Connect": needs(AGENT),
    f"{_V1}.Auth/CreateApiKey": changes(MANAGE_SECURITY),
    f"{_V1}.Auth/ListApiKeys": needs(MANAGE_SECURITY),
    f"{_V1}.Auth/RevokeApiKey": changes(MANAGE_SECURITY),
    f"{_V1}.Auth/WhoAmI": AUTHENTICATED,
    f"{_V1}.Gateways/WatchRoutes": needs(GATEWAY),
    f"{_V1}.Gateways/ReportGatewayStats": needs(GATEWAY),
    f"{_V1}.Gateways/ListGateways": needs(MONITOR),
    f"{_V1}.ControlPlanes/ListControlPlanes": needs(MONITOR),
    # KServe V2: liveness and readiness are probes (like grpc.health.v1)
    f"{_V2}/ServerLive": PUBLIC,
    f"{_V2}/ServerReady": PUBLIC,
    f"{_V2}/ServerMetadata": PUBLIC,
    f"{_V2}/ModelReady": needs(INFER, MONITOR),
    f"{_V2}/ModelMetadata": needs(INFER, MONITOR),
    f"{_V2}/ModelInfer": needs(INFER),
    f"{_V2}/ModelStreamInfer": needs(INFER),
    f"{_V2}/ModelStatistics": needs(INFER, MONITOR),
    f"{_V2}/RepositoryIndex": needs(INFER, MONITOR),
    f"{_V2}/ModelConfig": needs(INFER, MONITOR),
    f"{_V2}/RepositoryModelLoad": changes(MANAGE_DEPLOYMENTS),
    f"{_V2}/RepositoryModelUnload": changes(MANAGE_DEPLOYMENTS),
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    # the schema is public (the protos are); reflection reveals no data
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
}

# ---- the caller of the current RPC ----------------------------------------------------------
_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("modelfleet_principal", default=None)
_ANON_USER: contextvars.ContextVar[str] = contextvars.ContextVar("modelfleet_anonymous_user", default=DEFAULT_USER)


def current_principal() -> Principal | None:
    """The authenticated caller of the RPC being handled (None: auth off, or a public method)."""
    return _PRINCIPAL.get()


def caller(context: object = None) -> str:
    """The caller's user: the API key's user, or with auth off the x-modelfleet-user value ("default").

    The quota owner of deployments. `context` is accepted for the servicers'
    convenience; the identity was settled by the interceptor.
    """
    principal = _PRINCIPAL.get()
    return principal.user if principal is not None else _ANON_USER.get()


@contextlib.contextmanager
def acting_as(principal: Principal | None, *, anon_user: str = DEFAULT_USER) -> Iterator[None]:
    """`caller()` and `current_principal()` name `principal` (without one: `anon_user`) inside the
    block (REST handlers: aiohttp serves a keep-alive connection's requests in one task, so both
    are reset after)."""
    token, anon_token = _PRINCIPAL.set(principal), _ANON_USER.set(anon_user)
    try:
        yield
    finally:
        _PRINCIPAL.reset(token)
        _ANON_USER.reset(anon_token)


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Principal:
        """The key's principal; raises Unauthenticated (missing, malformed, unknown, revoked, expired)."""


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The token of `authorization: Bearer <token>` ("" when absent)."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("malformed authorization metadata: expected 'Bearer <api key>'")
            return token.strip()
    return ""


def _metadata_user(metadata: Iterable[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == "x-modelfleet-user" and value:
            return value.decode() if isinstance(value, bytes) else str(value)
    return DEFAULT_USER


def check(rule: Rule | None, method: str, principal: Principal) -> None:
    """Raise PermissionDenied unless principal may call method under rule."""
    if rule is None:
        raise PermissionDenied(f"method {method} is not in the access table; denied")
    if principal.join and method != JOIN_METHOD:
        raise PermissionDenied(
            f"{principal.describe()} is a join token: it may only register a node ({JOIN_METHOD}); "
            "the node's own key does the rest"
        )
    if rule.any_of and not principal.privileges & rule.any_of:
        need = " or ".join(sorted(rule.any_of))
        raise PermissionDenied(f"{principal.describe()} lacks the privilege {need} required by {method}")


class OpenCalls:
    """The open streaming calls of each API key, so that revoking the key ends them.

    Event-loop only. `track` registers the running task for the length of a
    call; `end_key` cancels every task of a key and remembers why, and
    `track` turns that cancellation into Unauthenticated(why)."""

    def __init__(self) -> None:
        self._tasks: dict[str, dict[asyncio.Task[Any], list[str]]] = {}

    @contextlib.contextmanager
    def track(self, key_id: str) -> Iterator[list[str]]:
        """Registers the current task under key_id; yields a list that holds the reason once ended."""
        task = asyncio.current_task()
        if task is None or not key_id:
            yield []
            return
        reason: list[str] = []
        self._tasks.setdefault(key_id, {})[task] = reason
        try:
            yield reason
        except asyncio.CancelledError:
            if reason:  # ended by end_key, not by the client
                raise Unauthenticated(reason[0]) from None
            raise
        finally:
            tasks = self._tasks.get(key_id, {})
            tasks.pop(task, None)
            if not tasks:
                self._tasks.pop(key_id, None)

    def count(self, key_id: str) -> int:
        return len(self._tasks.get(key_id, ()))

    def end_key(self, key_id: str, why: str) -> int:
        """Ends every open call of key_id with Unauthenticated(why); returns how many."""
        tasks = self._tasks.get(key_id, {})
        for task, reason in tasks.items():
            if not reason:
                reason.append(why)
                task.cancel()
        return len(tasks)


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates and authorizes every call against the access table.

    Args:
        authenticator: verifies bearer tokens; None turns authentication off.
        table: full method name -> Rule (tests may pass their own).
        open_calls: where streaming calls are registered by key (see OpenCalls).
        audit: where mutating calls are written (None: nowhere).
        throttle: slows down repeated authentication failures (None: never).
    """

    def __init__(
        self,
        authenticator: Authenticator | None,
        table: dict[str, Rule] | None = None,
        open_calls: OpenCalls | None = None,
        *,
        audit: AuditLog | None = None,
        throttle: FailureThrottle | None = None,
    ) -> None:
        self._auth = authenticator
        self._table = METHOD_ACCESS if table is None else table
        self.open_calls = open_calls if open_calls is not None else OpenCalls()
        self._audit = audit
        self._throttle = throttle

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        metadata = details.invocation_metadata
        rule = self._table.get(method)
        audit = self._audit if rule is not None and rule.mutating else None
        if self._auth is None:
            anon = _metadata_user(metadata)
            return _wrap(handler, principal=None, anon_user=anon, hooks=CallHooks(method, audit=audit, user=anon))
        token = ""
        try:
            if rule is not None and rule.public:
                return _wrap(handler, principal=None, anon_user=ANONYMOUS)
            token = bearer_token(metadata)
            if not token:
                raise Unauthenticated(f"{method} needs credentials: send 'authorization: Bearer <api key>'")
            principal = await self._auth.authenticate(token)
            check(rule, method, principal)
        except (Unauthenticated, PermissionDenied) as exc:
            hooks = CallHooks(method, audit=audit, throttle=self._throttle, key_id=_key_id_of(token))
            return _wrap(handler, error=exc, hooks=hooks)
        hooks = CallHooks(method, audit=audit, user=principal.user, key_id=principal.key_id)
        return _wrap(handler, principal=principal, anon_user=ANONYMOUS, open_calls=self.open_calls, hooks=hooks)


_KEY_ID = re.compile(r"^mfk_([0-9a-f]{16})_")


def _key_id_of(token: str) -> str:
    """The key id a token names, if it has the shape of one (for throttling guesses per key)."""
    match = _KEY_ID.match(token)
    return match.group(1) if match else ""


@dataclasses.dataclass(frozen=True)
class CallHooks:
    """What happens around one call besides the handler: the audit line of a
    mutating call, and the slow-down of a failed authentication."""

    method: str
    audit: AuditLog | None = None
    throttle: FailureThrottle | None = None
    user: str = ANONYMOUS
    key_id: str = ""

    async def refused(self, error: Exception, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Before a refusal is answered: count, maybe wait, maybe log; audit it."""
        message = getattr(error, "message", str(error))
        client = throttle.client_host(context.peer() or "")
        if self.throttle is not None and isinstance(error, Unauthenticated):
            delay, warn = self.throttle.failed(client=client, key_id=self.key_id, reason=throttle.reason_of(message))
            if warn:
                log.warning("authentication failed for %s from %s: %s (further failures are slowed down)", self.method, client, message)
            if delay:
                await asyncio.sleep(delay)
        self.write(rpc.status_of(error).name, message=message, request=request, context=context)

    async def run(self, fn: Callable[..., Awaitable[Any]], request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.audit is None:
            return await fn(request, context)
        try:
            reply = await fn(request, context)
        except asyncio.CancelledError:
            self.write("CANCELLED", message="the client went away", request=request, context=context)
            raise
        except Exception as exc:
            self.write(rpc.status_of(exc).name, message=getattr(exc, "message", "internal error"), request=request, context=context)
            raise
        self.write("OK", message="", request=request, context=context, reply=reply)
        return reply

    def write(self, outcome: str, *, message: str, request: Any, context: grpc.aio.ServicerContext, reply: Any = None) -> None:
        if self.audit is not None:
            self.audit.record(
                method=self.method, user=self.user, key_id=self.key_id, target=audit_target(request, reply),
                outcome=outcome, message=message, client=throttle.client_host(context.peer() or ""),
            )  # fmt: skip


_NO_HOOKS = CallHooks("")


def _wrap(
    handler: grpc.RpcMethodHandler,
    *,
    principal: Principal | None = None,
    anon_user: str = DEFAULT_USER,
    error: Exception | None = None,
    open_calls: OpenCalls | None = None,
    hooks: CallHooks = _NO_HOOKS,
) -> grpc.RpcMethodHandler:
    """The handler with the caller recorded, or a stand-in of the same kind that raises `error`.
    With open_calls, a streaming call (either side a stream) is tracked under its key (see OpenCalls)."""
    key_id = principal.key_id if principal is not None and open_calls is not None else ""

    def unary(fn: Callable[..., Awaitable[Any]], kind: rpc.RpcKind) -> Callable[..., Awaitable[Any]]:
        tracked = kind.streaming

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if error is not None:
                await hooks.refused(error, request, context)
                raise error
            _PRINCIPAL.set(principal)
            _ANON_USER.set(anon_user)
            if not (tracked and key_id and open_calls is not None):
                return await hooks.run(fn, request, context)
            with open_calls.track(key_id):
                return await hooks.run(fn, request, context)

        return call

    def streaming(fn: Callable[..., Any], kind: rpc.RpcKind) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if error is not None:
                await hooks.refused(error, request, context)
                raise error
            _PRINCIPAL.set(principal)
            _ANON_USER.set(anon_user)
            tracking: contextlib.AbstractContextManager[list[str]] = (
                open_calls.track(key_id) if open_calls is not None else contextlib.nullcontext([])
            )
            with tracking:
                async for item in fn(request, context):
                    yield item

        return call

    return rpc.wrap_handler(handler, coroutine=unary, generator=streaming)
