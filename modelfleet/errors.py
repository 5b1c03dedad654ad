"""How a domain error of either process names its gRPC status, free of any transport.

`StatusError` is the base of the control plane's `ModelfleetError`
(control_plane/errors.py) and of the worker's `WorkerError`
(node_agent/worker/errors.py). Each class says its status in one way: a
`code` class attribute holding the name of a `grpc.StatusCode` member
("INVALID_ARGUMENT"). The one interceptor that turns them into statuses is
`modelfleet.rpc.ErrorMapping`; it sends `message` as it is and `trailers` as
trailing metadata (grpc-retry-pushback-ms, for one).

The two classes here are the refusals that shared RPC plumbing makes itself
(modelfleet.rpc): a request message that does not parse, and one over a
server's size limit.
"""

from __future__ import annotations

from typing import ClassVar


class StatusError(Exception):
    """Base class. `code` names the gRPC status the interceptor sends."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, trailers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.trailers = dict(trailers or {})


class MalformedMessage(StatusError):
    """A request message that does not parse (grpc itself would answer UNKNOWN)."""

    code = "INVALID_ARGUMENT"


class MessageTooLarge(StatusError):
    """A request message over the server's limit, refused before it is parsed."""

    code = "RESOURCE_EXHAUSTED"
