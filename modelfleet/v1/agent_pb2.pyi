import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from modelfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "hostname", "capacity", "labels", "agent_version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    capacity: _common_pb2.NodeCapacity
    labels: _containers.ScalarMap[str, str]
    agent_version: str
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., capacity: _Optional[_Union[_common_pb2.NodeCapacity, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., agent_version: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "report")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    register: RegisterNode
    heartbeat: Heartbeat
    report: RoutingReport
    def __init__(self, register: _Optional[_Union[RegisterNode, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., report: _Optional[_Union[RoutingReport, _Mapping]] = ...) -> None: ...

class RegisterNode(_message.Message):
    __slots__ = ("node", "applied_generation", "allocations")
    NODE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    node: NodeInfo
    applied_generation: int
    allocations: _containers.RepeatedCompositeFieldContainer[AllocationReport]
    def __init__(self, node: _Optional[_Union[NodeInfo, _Mapping]] = ..., applied_generation: _Optional[int] = ..., allocations: _Optional[_Iterable[_Union[AllocationReport, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("applied_generation", "stats")
    APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    applied_generation: int
    stats: _containers.RepeatedCompositeFieldContainer[AllocationStats]
    def __init__(self, applied_generation: _Optional[int] = ..., stats: _Optional[_Iterable[_Union[AllocationStats, _Mapping]]] = ...) -> None: ...

class RoutingReport(_message.Message):
    __slots__ = ("applied_generation", "allocations")
    APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    applied_generation: int
    allocations: _containers.RepeatedCompositeFieldContainer[AllocationReport]
    def __init__(self, applied_generation: _Optional[int] = ..., allocations: _Optional[_Iterable[_Union[AllocationReport, _Mapping]]] = ...) -> None: ...

class AllocationReport(_message.Message):
    __slots__ = ("allocation_id", "deployment_id", "routing_state", "reason", "worker_address", "worker_pid", "started_at", "restarts")
    ALLOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTING_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WORKER_PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    allocation_id: str
    deployment_id: str
    routing_state: _common_pb2.RoutingState
    reason: str
    worker_address: str
    worker_pid: int
    started_at: _timestamp_pb2.Timestamp
    restarts: int
    def __init__(self, allocation_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., routing_state: _Optional[_Union[_common_pb2.RoutingState, str]] = ..., reason: _Optional[str] = ..., worker_address: _Optional[str] = ..., worker_pid: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., restarts: _Optional[int] = ...) -> None: ...

class AllocationStats(_message.Message):
    __slots__ = ("allocation_id", "stats")
    ALLOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    allocation_id: str
    stats: _common_pb2.InferenceStats
    def __init__(self, allocation_id: _Optional[str] = ..., stats: _Optional[_Union[_common_pb2.InferenceStats, _Mapping]] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("welcome", "assignment", "credentials")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assignment: Assignment
    credentials: InferenceCredentials
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ..., credentials: _Optional[_Union[InferenceCredentials, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("node_id", "heartbeat_interval", "node_timeout", "node_credential")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    NODE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    NODE_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    heartbeat_interval: _duration_pb2.Duration
    node_timeout: _duration_pb2.Duration
    node_credential: str
    def __init__(self, node_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., node_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., node_credential: _Optional[str] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("generation", "allocations")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    allocations: _containers.RepeatedCompositeFieldContainer[AllocationSpec]
    def __init__(self, generation: _Optional[int] = ..., allocations: _Optional[_Iterable[_Union[AllocationSpec, _Mapping]]] = ...) -> None: ...

class AllocationSpec(_message.Message):
    __slots__ = ("allocation_id", "deployment_id", "variant", "model_id", "model_version", "model_sha256", "model_bytes", "format", "inference_threads", "model_threads", "queue_capacity", "env", "resources", "max_batch_size", "max_queue_delay_us", "inputs", "outputs", "worker_token")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ALLOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_THREADS_FIELD_NUMBER: _ClassVar[int]
    MODEL_THREADS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    allocation_id: str
    deployment_id: str
    variant: str
    model_id: str
    model_version: int
    model_sha256: str
    model_bytes: int
    format: _common_pb2.ModelFormat
    inference_threads: int
    model_threads: int
    queue_capacity: int
    env: _containers.ScalarMap[str, str]
    resources: _common_pb2.Resources
    max_batch_size: int
    max_queue_delay_us: int
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorSpec]
    worker_token: str
    def __init__(self, allocation_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., variant: _Optional[str] = ..., model_id: _Optional[str] = ..., model_version: _Optional[int] = ..., model_sha256: _Optional[str] = ..., model_bytes: _Optional[int] = ..., format: _Optional[_Union[_common_pb2.ModelFormat, str]] = ..., inference_threads: _Optional[int] = ..., model_threads: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., max_batch_size: _Optional[int] = ..., max_queue_delay_us: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.TensorSpec, _Mapping]]] = ..., worker_token: _Optional[str] = ...) -> None: ...

class InferenceCredentials(_message.Message):
    __slots__ = ("version", "keys")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    version: int
    keys: _containers.RepeatedCompositeFieldContainer[KeyVerifier]
    def __init__(self, version: _Optional[int] = ..., keys: _Optional[_Iterable[_Union[KeyVerifier, _Mapping]]] = ...) -> None: ...

class KeyVerifier(_message.Message):
    __slots__ = ("key_id", "salt", "secret_hash", "iterations", "expires_at", "user")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    SECRET_HASH_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    salt: bytes
    secret_hash: bytes
    iterations: int
    expires_at: _timestamp_pb2.Timestamp
    user: str
    def __init__(self, key_id: _Optional[str] = ..., salt: _Optional[bytes] = ..., secret_hash: _Optional[bytes] = ..., iterations: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., user: _Optional[str] = ...) -> None: ...
