"""Domain errors of the control plane, free of any transport.

Service code raises these; the one server interceptor (modelfleet.rpc's
ErrorMapping, installed by control_plane.api.server) sends the status each
class's `code` names (modelfleet.errors.StatusError, the worker's errors
share the mechanism), so no RPC can forget the mapping. The message is
shown to the client as it is: it names the field, the value or the limit.
Anything else that escapes becomes INTERNAL with a generic message and the
traceback goes to the log.
"""

from __future__ import annotations

from modelfleet.errors import StatusError


class ModelfleetError(StatusError):
    """Base class. `code` names the gRPC status the interceptor sends."""

    code = "INTERNAL"


class InvalidArgument(ModelfleetError):
    code = "INVALID_ARGUMENT"


class NotFound(ModelfleetError):
    code = "NOT_FOUND"


class AlreadyExists(ModelfleetError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(ModelfleetError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(ModelfleetError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ModelfleetError):
    code = "DEADLINE_EXCEEDED"


class Unavailable(ModelfleetError):
    code = "UNAVAILABLE"


class Unauthenticated(ModelfleetError):
    code = "UNAUTHENTICATED"


class PermissionDenied(ModelfleetError):
    code = "PERMISSION_DENIED"


class Unimplemented(ModelfleetError):
    code = "UNIMPLEMENTED"


class DataLoss(ModelfleetError):
    code = "DATA_LOSS"


LEADER_METADATA = "modelfleet-leader"  # trailing metadata of a NotLeader refusal: the leader's HOST:PORT


class NotLeader(Unavailable):
    """A mutation, agent stream or routes watch reached a control plane that is
    not the leader (a standby, or a deposed leader). Nothing was written; the
    trailers name the leader's address so that a client can go there."""

    def __init__(self, message: str, *, leader_address: str = "") -> None:
        super().__init__(message, trailers={LEADER_METADATA: leader_address} if leader_address else None)
        self.leader_address = leader_address
