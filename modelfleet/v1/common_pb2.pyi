import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FORMAT_UNSPECIFIED: _ClassVar[ModelFormat]
    MODEL_FORMAT_ONNX: _ClassVar[ModelFormat]
    MODEL_FORMAT_TORCHSCRIPT: _ClassVar[ModelFormat]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_NORMAL: _ClassVar[ModelState]
    MODEL_STATE_INVALID: _ClassVar[ModelState]

class RoutingState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTING_STATE_UNSPECIFIED: _ClassVar[RoutingState]
    ROUTING_STATE_STARTING: _ClassVar[RoutingState]
    ROUTING_STATE_STARTED: _ClassVar[RoutingState]
    ROUTING_STATE_STOPPING: _ClassVar[RoutingState]
    ROUTING_STATE_STOPPED: _ClassVar[RoutingState]
    ROUTING_STATE_FAILED: _ClassVar[RoutingState]

class AllocationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALLOCATION_STATE_UNSPECIFIED: _ClassVar[AllocationState]
    ALLOCATION_STATE_STARTING: _ClassVar[AllocationState]
    ALLOCATION_STATE_STARTED: _ClassVar[AllocationState]
    ALLOCATION_STATE_FULLY_ALLOCATED: _ClassVar[AllocationState]
    ALLOCATION_STATE_STOPPING: _ClassVar[AllocationState]
    ALLOCATION_STATE_STOPPED: _ClassVar[AllocationState]

class DeploymentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATUS_UNSPECIFIED: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_DEPLOYING: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_RUNNING: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_CONCERNING: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_ABNORMAL: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_FAILED: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_STOPPING: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_STOPPED: _ClassVar[DeploymentStatus]

class View(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIEW_UNSPECIFIED: _ClassVar[View]
    VIEW_BASIC: _ClassVar[View]
    VIEW_FULL: _ClassVar[View]
MODEL_FORMAT_UNSPECIFIED: ModelFormat
MODEL_FORMAT_ONNX: ModelFormat
MODEL_FORMAT_TORCHSCRIPT: ModelFormat
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_NORMAL: ModelState
MODEL_STATE_INVALID: ModelState
ROUTING_STATE_UNSPECIFIED: RoutingState
ROUTING_STATE_STARTING: RoutingState
ROUTING_STATE_STARTED: RoutingState
ROUTING_STATE_STOPPING: RoutingState
ROUTING_STATE_STOPPED: RoutingState
ROUTING_STATE_FAILED: RoutingState
ALLOCATION_STATE_UNSPECIFIED: AllocationState
ALLOCATION_STATE_STARTING: AllocationState
ALLOCATION_STATE_STARTED: AllocationState
ALLOCATION_STATE_FULLY_ALLOCATED: AllocationState
ALLOCATION_STATE_STOPPING: AllocationState
ALLOCATION_STATE_STOPPED: AllocationState
DEPLOYMENT_STATUS_UNSPECIFIED: DeploymentStatus
DEPLOYMENT_STATUS_DEPLOYING: DeploymentStatus
DEPLOYMENT_STATUS_RUNNING: DeploymentStatus
DEPLOYMENT_STATUS_CONCERNING: DeploymentStatus
DEPLOYMENT_STATUS_ABNORMAL: DeploymentStatus
DEPLOYMENT_STATUS_FAILED: DeploymentStatus
DEPLOYMENT_STATUS_STOPPING: DeploymentStatus
DEPLOYMENT_STATUS_STOPPED: DeploymentStatus
VIEW_UNSPECIFIED: View
VIEW_BASIC: View
VIEW_FULL: View

class PageRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ReasonCount(_message.Message):
    __slots__ = ("reason", "count", "example_nodes")
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_NODES_FIELD_NUMBER: _ClassVar[int]
    reason: str
    count: int
    example_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reason: _Optional[str] = ..., count: _Optional[int] = ..., example_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpus", "memory_bytes", "gpus", "pool")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    memory_bytes: int
    gpus: int
    pool: str
    def __init__(self, cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[int] = ..., pool: _Optional[str] = ...) -> None: ...

class NodeCapacity(_message.Message):
    __slots__ = ("cpus", "memory_bytes", "gpus")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    memory_bytes: int
    gpus: int
    def __init__(self, cpus: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[int] = ...) -> None: ...

class InferenceStats(_message.Message):
    __slots__ = ("inference_count", "average_inference_time_ms", "error_count", "rejected_execution_count", "timeout_count", "number_of_pending_requests", "peak_throughput_per_minute", "throughput_last_minute", "last_access", "start_time", "cancelled_count")
    INFERENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_INFERENCE_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_EXECUTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_COUNT_FIELD_NUMBER: _ClassVar[int]
    NUMBER_OF_PENDING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PEAK_THROUGHPUT_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCESS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_COUNT_FIELD_NUMBER: _ClassVar[int]
    inference_count: int
    average_inference_time_ms: float
    error_count: int
    rejected_execution_count: int
    timeout_count: int
    number_of_pending_requests: int
    peak_throughput_per_minute: int
    throughput_last_minute: int
    last_access: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    cancelled_count: int
    def __init__(self, inference_count: _Optional[int] = ..., average_inference_time_ms: _Optional[float] = ..., error_count: _Optional[int] = ..., rejected_execution_count: _Optional[int] = ..., timeout_count: _Optional[int] = ..., number_of_pending_requests: _Optional[int] = ..., peak_throughput_per_minute: _Optional[int] = ..., throughput_last_minute: _Optional[int] = ..., last_access: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cancelled_count: _Optional[int] = ...) -> None: ...
