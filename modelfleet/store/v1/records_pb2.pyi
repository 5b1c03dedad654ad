import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from modelfleet.v1 import agent_pb2 as _agent_pb2
from modelfleet.v1 import common_pb2 as _common_pb2
from modelfleet.v1 import deployments_pb2 as _deployments_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DesiredState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DESIRED_STATE_UNSPECIFIED: _ClassVar[DesiredState]
    DESIRED_STATE_RUNNING: _ClassVar[DesiredState]
    DESIRED_STATE_STOPPED: _ClassVar[DesiredState]
DESIRED_STATE_UNSPECIFIED: DesiredState
DESIRED_STATE_RUNNING: DesiredState
DESIRED_STATE_STOPPED: DesiredState

class DeploymentRecord(_message.Message):
    __slots__ = ("deployment_id", "spec", "desired", "owner", "created_at", "start_time", "stopped_at", "stop_reason", "revision", "status", "status_reason", "ever_served", "autoscaled")
    class AutoscaledEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AutoscaledVariant
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AutoscaledVariant, _Mapping]] = ...) -> None: ...
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    STOPPED_AT_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    EVER_SERVED_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALED_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    spec: _deployments_pb2.StartDeploymentRequest
    desired: DesiredState
    owner: str
    created_at: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    stopped_at: _timestamp_pb2.Timestamp
    stop_reason: str
    revision: int
    status: _common_pb2.DeploymentStatus
    status_reason: str
    ever_served: bool
    autoscaled: _containers.MessageMap[str, AutoscaledVariant]
    def __init__(self, deployment_id: _Optional[str] = ..., spec: _Optional[_Union[_deployments_pb2.StartDeploymentRequest, _Mapping]] = ..., desired: _Optional[_Union[DesiredState, str]] = ..., owner: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stopped_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stop_reason: _Optional[str] = ..., revision: _Optional[int] = ..., status: _Optional[_Union[_common_pb2.DeploymentStatus, str]] = ..., status_reason: _Optional[str] = ..., ever_served: _Optional[bool] = ..., autoscaled: _Optional[_Mapping[str, AutoscaledVariant]] = ...) -> None: ...

class AutoscaledVariant(_message.Message):
    __slots__ = ("wanted", "reason", "last_change")
    WANTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_CHANGE_FIELD_NUMBER: _ClassVar[int]
    wanted: int
    reason: str
    last_change: _timestamp_pb2.Timestamp
    def __init__(self, wanted: _Optional[int] = ..., reason: _Optional[str] = ..., last_change: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AllocationRecord(_message.Message):
    __slots__ = ("allocation_id", "deployment_id", "variant", "node_id", "desired", "routing_state", "reason", "worker_address", "created_at", "start_time", "spec")
    ALLOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    ROUTING_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    allocation_id: str
    deployment_id: str
    variant: str
    node_id: str
    desired: DesiredState
    routing_state: _common_pb2.RoutingState
    reason: str
    worker_address: str
    created_at: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    spec: _agent_pb2.AllocationSpec
    def __init__(self, allocation_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., variant: _Optional[str] = ..., node_id: _Optional[str] = ..., desired: _Optional[_Union[DesiredState, str]] = ..., routing_state: _Optional[_Union[_common_pb2.RoutingState, str]] = ..., reason: _Optional[str] = ..., worker_address: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spec: _Optional[_Union[_agent_pb2.AllocationSpec, _Mapping]] = ...) -> None: ...

class NodeRecord(_message.Message):
    __slots__ = ("info", "schedulable", "registered_at", "generation", "agent_key_id")
    INFO_FIELD_NUMBER: _ClassVar[int]
    SCHEDULABLE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    AGENT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    info: _agent_pb2.NodeInfo
    schedulable: bool
    registered_at: _timestamp_pb2.Timestamp
    generation: int
    agent_key_id: str
    def __init__(self, info: _Optional[_Union[_agent_pb2.NodeInfo, _Mapping]] = ..., schedulable: _Optional[bool] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., generation: _Optional[int] = ..., agent_key_id: _Optional[str] = ...) -> None: ...

class RequestRecord(_message.Message):
    __slots__ = ("request_id", "method", "response", "created_at", "request_digest")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    method: str
    response: bytes
    created_at: _timestamp_pb2.Timestamp
    request_digest: str
    def __init__(self, request_id: _Optional[str] = ..., method: _Optional[str] = ..., response: _Optional[bytes] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_digest: _Optional[str] = ...) -> None: ...

class EventLogRecord(_message.Message):
    __slots__ = ("deployment_id", "events", "last_seq")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    events: _containers.RepeatedCompositeFieldContainer[_deployments_pb2.DeploymentEvent]
    last_seq: int
    def __init__(self, deployment_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[_deployments_pb2.DeploymentEvent, _Mapping]]] = ..., last_seq: _Optional[int] = ...) -> None: ...

class ApiKeyRecord(_message.Message):
    __slots__ = ("key_id", "user", "roles", "privileges", "name", "salt", "secret_hash", "hash_iterations", "created_at", "expires_at", "revoked_at", "created_by", "node_id", "join", "max_uses", "uses")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    SECRET_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    user: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    privileges: _containers.RepeatedScalarFieldContainer[str]
    name: str
    salt: bytes
    secret_hash: bytes
    hash_iterations: int
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    created_by: str
    node_id: str
    join: bool
    max_uses: int
    uses: int
    def __init__(self, key_id: _Optional[str] = ..., user: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., privileges: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ..., salt: _Optional[bytes] = ..., secret_hash: _Optional[bytes] = ..., hash_iterations: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., node_id: _Optional[str] = ..., join: _Optional[bool] = ..., max_uses: _Optional[int] = ..., uses: _Optional[int] = ...) -> None: ...
