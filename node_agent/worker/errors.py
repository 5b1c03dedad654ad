"""Domain errors of the inference worker, free of any transport.

Service, codec and queue code raise these; the one server interceptor
(modelfleet.rpc's ErrorMapping, installed by `node_agent.worker.server`)
maps `code` (a gRPC status name, the mechanism of modelfleet.errors.StatusError
that the control plane's errors share) onto the status and sends `message` as
it is, with `trailers` as trailing metadata. Anything else that escapes a
handler becomes INTERNAL with a generic message and its traceback is logged.
"""

from __future__ import annotations

from modelfleet.errors import StatusError


class WorkerError(StatusError):
    """Base class. `code` names the gRPC status the interceptor sends."""

    code = "INTERNAL"


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


class Unimplemented(WorkerError):
    """A Triton method modelfleet does not serve; the message names the call to use."""

    code = "UNIMPLEMENTED"
