"""RPC plumbing every grpc.aio server of modelfleet uses (the control plane's
and the worker's): wrapping a method handler while keeping its kind, the
tolerant request deserializer, and the one mapping from domain errors to
status codes.

- `wrap_handler`: a `grpc.RpcMethodHandler` of any of the four kinds with
  its behaviour wrapped. grpc.aio takes a behaviour with a response stream
  either as an async generator or as a coroutine that writes with
  context.write (the health service's Watch), and tells them apart by what
  the function is; the wrapper must be of the same sort, so the caller
  gives one wrapper for coroutines and one for async generators.
- `tolerant`: a request message that does not parse becomes a
  `MalformedMessage` (INVALID_ARGUMENT; grpc itself would answer UNKNOWN),
  and one over a size limit a `MessageTooLarge` (RESOURCE_EXHAUSTED)
  without being parsed; the handler's wrapper raises it, for every message
  of a request stream too.
- `ErrorMapping`, the interceptor both servers put outermost: a
  `modelfleet.errors.StatusError` (the base of both processes' domain
  errors) becomes the status its `code` names, with its message and its
  trailers; an abort the handler made itself passes through; anything else
  becomes INTERNAL "internal error" and its traceback is logged.

Runs on the server's event loop; wrappers are built once per method and
handler object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn

import grpc

from modelfleet.errors import MalformedMessage, MessageTooLarge, StatusError

log = logging.getLogger(__name__)

Behaviour = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class RpcKind:
    """Which sides of an RPC are streams."""

    streamed_requests: bool
    streamed_responses: bool

    @property
    def streaming(self) -> bool:
        return self.streamed_requests or self.streamed_responses


# the handler's behaviour field of each kind (exactly one is set on a handler)
KINDS: tuple[tuple[str, RpcKind], ...] = (
    ("unary_unary", RpcKind(streamed_requests=False, streamed_responses=False)),
    ("unary_stream", RpcKind(streamed_requests=False, streamed_responses=True)),
    ("stream_unary", RpcKind(streamed_requests=True, streamed_responses=False)),
    ("stream_stream", RpcKind(streamed_requests=True, streamed_responses=True)),
)
Wrap = Callable[[Behaviour, RpcKind], Behaviour]


def wrap_handler(handler: grpc.RpcMethodHandler, *, coroutine: Wrap, generator: Wrap, **fields: Any) -> grpc.RpcMethodHandler:
    """handler with its behaviour replaced by coroutine(behaviour, kind) when it is a
    coroutine function, by generator(behaviour, kind) when it is an async generator
    function; `fields` (request_deserializer=...) are replaced with it. A handler
    with no behaviour comes back as it is."""
    for field, kind in KINDS:
        behaviour = getattr(handler, field)
        if behaviour is not None:
            wrap = generator if inspect.isasyncgenfunction(behaviour) else coroutine
            return handler._replace(**{field: wrap(behaviour, kind)}, **fields)
    return handler


# ---- undecodable and oversized request messages ------------------------------------------
class Undecodable:
    """A request message that did not parse (or is over the limit); the handler's wrapper raises `error`."""

    def __init__(self, error: StatusError) -> None:
        self.error = error


@dataclasses.dataclass(frozen=True)
class MessageLimit:
    """Request messages over `max_bytes` are refused RESOURCE_EXHAUSTED before they are
    parsed, except for the `exempt` methods (full names); `scope` names the limit in the
    refusal: "... larger than the N-byte limit of {scope}"."""

    max_bytes: int
    scope: str
    exempt: frozenset[str] = frozenset()

    def of(self, method: str) -> int:
        """The limit of `method` in bytes; 0 = none."""
        return 0 if method in self.exempt else self.max_bytes


def tolerant(deserializer: Callable[[bytes], Any] | None, *, limit: int = 0, scope: str = "") -> Callable[[bytes], Any] | None:
    """deserializer, answering `Undecodable` instead of raising (grpc would say UNKNOWN),
    and for a message over `limit` bytes (0: none) without parsing it."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        if limit and len(data) > limit:
            return Undecodable(
                MessageTooLarge(f"request message of {len(data)} bytes is larger than the {limit}-byte limit of {scope}")
            )
        try:
            return deserializer(data)
        except StatusError as exc:  # a custom deserializer's own refusal
            return Undecodable(exc)
        except Exception as exc:  # DecodeError, or whatever a custom deserializer raises
            return Undecodable(MalformedMessage(f"malformed request message: {exc}"))

    return parse


async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream whose undecodable message raises its error when it is read."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.error
        yield request


# ---- domain errors -> status codes -----------------------------------------------------------
def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status an escaping exception is answered with: a StatusError's `code`, else INTERNAL."""
    return grpc.StatusCode[exc.code] if isinstance(exc, StatusError) else grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, exc: Exception, *, method: str, logger: logging.Logger = log) -> NoReturn:
    """End the call for exc: its status, message and trailers, or INTERNAL with the traceback logged."""
    if isinstance(exc, StatusError):
        if exc.trailers:
            context.set_trailing_metadata(tuple(exc.trailers.items()))
        await context.abort(status_of(exc), exc.message)
    logger.error("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    raise AssertionError("context.abort returned")  # grpc.aio's abort always raises


def _mapped_coroutine(
    fn: Behaviour, kind: RpcKind, *, method: str, logger: logging.Logger, report: Callable[[str], None] | None
) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if isinstance(request, Undecodable):
                raise request.error
            reply = await fn(checked(request) if kind.streamed_requests else request, context)
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            if report is not None:
                report("CANCELLED")  # the client went away or its deadline passed
            raise
        except Exception as exc:
            if report is not None:
                report(status_of(exc).name)
            await abort(context, exc, method=method, logger=logger)
        if report is not None:
            report("OK")
        return reply

    return call


def _mapped_generator(fn: Behaviour, kind: RpcKind, *, method: str, logger: logging.Logger) -> Callable[..., AsyncIterator[Any]]:
    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            if isinstance(request, Undecodable):
                raise request.error
            async for item in fn(checked(request) if kind.streamed_requests else request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, method=method, logger=logger)

    return stream


class ErrorMapping(grpc.aio.ServerInterceptor):
    """The one place where errors become status codes (see the module docstring).

    Args:
        logger: where unexpected errors are logged (the server's own module).
        limit: the request message limit, if the server has one beside the transport's.
        on_status: per full method name, a callback given the final status name
            ("OK", "CANCELLED", "INVALID_ARGUMENT", ...) of each call of it
            that answers one message.
    """

    def __init__(
        self,
        *,
        logger: logging.Logger = log,
        limit: MessageLimit | None = None,
        on_status: Mapping[str, Callable[[str], None]] | None = None,
    ) -> None:
        self._logger = logger
        self._limit = limit
        self._on_status = dict(on_status or {})
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
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """handler with errors mapped and request messages parsed tolerantly."""
        logger, report = self._logger, self._on_status.get(method)
        limit = self._limit
        deserializer = tolerant(
            handler.request_deserializer, limit=limit.of(method) if limit else 0, scope=limit.scope if limit else ""
        )
        return wrap_handler(
            handler,
            coroutine=lambda fn, kind: _mapped_coroutine(fn, kind, method=method, logger=logger, report=report),
            generator=lambda fn, kind: _mapped_generator(fn, kind, method=method, logger=logger),
            request_deserializer=deserializer,
        )
