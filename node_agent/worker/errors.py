"""Domain errors of the inference worker, free of any transport.

Service, codec and queue code raise these; the one server interceptor in
`node_agent.worker.server` maps `code` (a gRPC status name) onto the status
and sends `message` as it is, with `trailers` as trailing metadata. Anything
else that escapes a handler becomes INTERNAL with a generic message and its
traceback is logged. (The control plane has its own errors.py: the two
processes share only the protos.)
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base class. `code` names the gRPC status the interceptor sends."""

    code = "INTERNAL"

    def __init__(self, message: str, *, trailers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.trailers = dict(trailers or {})


class InvalidArgument(WorkerError):
    """A malformed request or tensor: the model never ran."""

    code = "INVALID_ARGUMENT"


class NotFound(WorkerError):
    """The request names another model or version than this worker serves."""

    code = "NOT_FOUND"


class QueueFull(WorkerError):
    """The bounded queue is full: rejected at once (Elasticsearch's 429)."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(WorkerError):
    """The call's deadline passed before a model thread could take it."""

    code = "DEADLINE_EXCEEDED"


class Unavailable(WorkerError):
    """The worker is draining (or not serving yet): try another worker."""

    code = "UNAVAILABLE"


class ModelExecutionFailed(WorkerError):
    """The model raised while running; the message carries the runtime's."""

    code = "INTERNAL"


class Unauthenticated(WorkerError):
    """No, malformed, unknown, revoked or expired credentials."""

    code = "UNAUTHENTICATED"


class PermissionDenied(WorkerError):
    """Valid credentials that may not call this method."""

    code = "PERMISSION_DENIED"
