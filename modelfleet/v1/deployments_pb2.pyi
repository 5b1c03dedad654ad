import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from modelfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WaitFor(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WAIT_FOR_UNSPECIFIED: _ClassVar[WaitFor]
    WAIT_FOR_STARTING: _ClassVar[WaitFor]
    WAIT_FOR_STARTED: _ClassVar[WaitFor]
    WAIT_FOR_FULLY_ALLOCATED: _ClassVar[WaitFor]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_STATUS: _ClassVar[EventKind]
    EVENT_KIND_ROUTING: _ClassVar[EventKind]
    EVENT_KIND_SPEC: _ClassVar[EventKind]
    EVENT_KIND_SCALE: _ClassVar[EventKind]
WAIT_FOR_UNSPECIFIED: WaitFor
WAIT_FOR_STARTING: WaitFor
WAIT_FOR_STARTED: WaitFor
WAIT_FOR_FULLY_ALLOCATED: WaitFor
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_STATUS: EventKind
EVENT_KIND_ROUTING: EventKind
EVENT_KIND_SPEC: EventKind
EVENT_KIND_SCALE: EventKind

class VariantSpec(_message.Message):
    __slots__ = ("name", "model_id", "model_version", "weight", "inference_threads", "model_threads", "queue_capacity", "instances", "resources", "env", "max_batch_size", "max_queue_delay_us", "autoscaling")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_THREADS_FIELD_NUMBER: _ClassVar[int]
    MODEL_THREADS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_id: str
    model_version: int
    weight: int
    inference_threads: int
    model_threads: int
    queue_capacity: int
    instances: int
    resources: _common_pb2.Resources
    env: _containers.ScalarMap[str, str]
    max_batch_size: int
    max_queue_delay_us: int
    autoscaling: Autoscaling
    def __init__(self, name: _Optional[str] = ..., model_id: _Optional[str] = ..., model_version: _Optional[int] = ..., weight: _Optional[int] = ..., inference_threads: _Optional[int] = ..., model_threads: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., instances: _Optional[int] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ..., max_batch_size: _Optional[int] = ..., max_queue_delay_us: _Optional[int] = ..., autoscaling: _Optional[_Union[Autoscaling, _Mapping]] = ...) -> None: ...

class Autoscaling(_message.Message):
    __slots__ = ("enabled", "min_allocations", "max_allocations", "target_in_flight_per_allocation", "upscale_delay", "downscale_delay", "scale_to_zero_after")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MIN_ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    TARGET_IN_FLIGHT_PER_ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_DELAY_FIELD_NUMBER: _ClassVar[int]
    DOWNSCALE_DELAY_FIELD_NUMBER: _ClassVar[int]
    SCALE_TO_ZERO_AFTER_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    min_allocations: int
    max_allocations: int
    target_in_flight_per_allocation: float
    upscale_delay: _duration_pb2.Duration
    downscale_delay: _duration_pb2.Duration
    scale_to_zero_after: _duration_pb2.Duration
    def __init__(self, enabled: _Optional[bool] = ..., min_allocations: _Optional[int] = ..., max_allocations: _Optional[int] = ..., target_in_flight_per_allocation: _Optional[float] = ..., upscale_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., downscale_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., scale_to_zero_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AutoscalingStatus(_message.Message):
    __slots__ = ("current", "target", "min_allocations", "max_allocations", "reason", "last_change")
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MIN_ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_CHANGE_FIELD_NUMBER: _ClassVar[int]
    current: int
    target: int
    min_allocations: int
    max_allocations: int
    reason: str
    last_change: _timestamp_pb2.Timestamp
    def __init__(self, current: _Optional[int] = ..., target: _Optional[int] = ..., min_allocations: _Optional[int] = ..., max_allocations: _Optional[int] = ..., reason: _Optional[str] = ..., last_change: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StartDeploymentRequest(_message.Message):
    __slots__ = ("model_id", "model_version", "deployment_id", "inference_threads", "model_threads", "queue_capacity", "timeout", "wait_for", "description", "instances", "resources", "env", "auto_stop", "traffic_limit_qps", "variants", "request_id", "dry_run", "max_unavailable", "autoscaling")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_THREADS_FIELD_NUMBER: _ClassVar[int]
    MODEL_THREADS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    AUTO_STOP_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_LIMIT_QPS_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    MAX_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_version: int
    deployment_id: str
    inference_threads: int
    model_threads: int
    queue_capacity: int
    timeout: _duration_pb2.Duration
    wait_for: WaitFor
    description: str
    instances: int
    resources: _common_pb2.Resources
    env: _containers.ScalarMap[str, str]
    auto_stop: _duration_pb2.Duration
    traffic_limit_qps: float
    variants: _containers.RepeatedCompositeFieldContainer[VariantSpec]
    request_id: str
    dry_run: bool
    max_unavailable: int
    autoscaling: Autoscaling
    def __init__(self, model_id: _Optional[str] = ..., model_version: _Optional[int] = ..., deployment_id: _Optional[str] = ..., inference_threads: _Optional[int] = ..., model_threads: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., wait_for: _Optional[_Union[WaitFor, str]] = ..., description: _Optional[str] = ..., instances: _Optional[int] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ..., auto_stop: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., traffic_limit_qps: _Optional[float] = ..., variants: _Optional[_Iterable[_Union[VariantSpec, _Mapping]]] = ..., request_id: _Optional[str] = ..., dry_run: _Optional[bool] = ..., max_unavailable: _Optional[int] = ..., autoscaling: _Optional[_Union[Autoscaling, _Mapping]] = ...) -> None: ...

class TaskParameters(_message.Message):
    __slots__ = ("model_id", "model_bytes", "inference_threads", "model_threads", "queue_capacity", "model_version", "sha256")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_THREADS_FIELD_NUMBER: _ClassVar[int]
    MODEL_THREADS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_bytes: int
    inference_threads: int
    model_threads: int
    queue_capacity: int
    model_version: int
    sha256: str
    def __init__(self, model_id: _Optional[str] = ..., model_bytes: _Optional[int] = ..., inference_threads: _Optional[int] = ..., model_threads: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., model_version: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class RoutingEntry(_message.Message):
    __slots__ = ("routing_state", "reason", "allocation_id", "worker_address", "start_time")
    ROUTING_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    routing_state: _common_pb2.RoutingState
    reason: str
    allocation_id: str
    worker_address: str
    start_time: _timestamp_pb2.Timestamp
    def __init__(self, routing_state: _Optional[_Union[_common_pb2.RoutingState, str]] = ..., reason: _Optional[str] = ..., allocation_id: _Optional[str] = ..., worker_address: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("task_parameters", "routing_table", "allocation_state", "start_time", "variant", "weight", "target_nodes", "not_chosen", "not_chosen_summary", "route_counts", "autoscaling")
    class RoutingTableEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: RoutingEntry
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[RoutingEntry, _Mapping]] = ...) -> None: ...
    class NotChosenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class RouteCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TASK_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_TABLE_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_STATE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODES_FIELD_NUMBER: _ClassVar[int]
    NOT_CHOSEN_FIELD_NUMBER: _ClassVar[int]
    NOT_CHOSEN_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ROUTE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    task_parameters: TaskParameters
    routing_table: _containers.MessageMap[str, RoutingEntry]
    allocation_state: _common_pb2.AllocationState
    start_time: _timestamp_pb2.Timestamp
    variant: str
    weight: int
    target_nodes: int
    not_chosen: _containers.ScalarMap[str, str]
    not_chosen_summary: _containers.RepeatedCompositeFieldContainer[_common_pb2.ReasonCount]
    route_counts: _containers.ScalarMap[str, int]
    autoscaling: AutoscalingStatus
    def __init__(self, task_parameters: _Optional[_Union[TaskParameters, _Mapping]] = ..., routing_table: _Optional[_Mapping[str, RoutingEntry]] = ..., allocation_state: _Optional[_Union[_common_pb2.AllocationState, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., variant: _Optional[str] = ..., weight: _Optional[int] = ..., target_nodes: _Optional[int] = ..., not_chosen: _Optional[_Mapping[str, str]] = ..., not_chosen_summary: _Optional[_Iterable[_Union[_common_pb2.ReasonCount, _Mapping]]] = ..., route_counts: _Optional[_Mapping[str, int]] = ..., autoscaling: _Optional[_Union[AutoscalingStatus, _Mapping]] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("deployment_id", "status", "status_reason", "description", "variants", "allocations", "owner", "created_at", "start_time", "stopped_at", "auto_stop", "auto_stop_at", "traffic_limit_qps", "revision", "retiring", "rollout")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    STOPPED_AT_FIELD_NUMBER: _ClassVar[int]
    AUTO_STOP_FIELD_NUMBER: _ClassVar[int]
    AUTO_STOP_AT_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_LIMIT_QPS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RETIRING_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    status: _common_pb2.DeploymentStatus
    status_reason: str
    description: str
    variants: _containers.RepeatedCompositeFieldContainer[VariantSpec]
    allocations: _containers.RepeatedCompositeFieldContainer[Allocation]
    owner: str
    created_at: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    stopped_at: _timestamp_pb2.Timestamp
    auto_stop: _duration_pb2.Duration
    auto_stop_at: _timestamp_pb2.Timestamp
    traffic_limit_qps: float
    revision: int
    retiring: _containers.RepeatedCompositeFieldContainer[Allocation]
    rollout: str
    def __init__(self, deployment_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.DeploymentStatus, str]] = ..., status_reason: _Optional[str] = ..., description: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[VariantSpec, _Mapping]]] = ..., allocations: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ..., owner: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stopped_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., auto_stop: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., auto_stop_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., traffic_limit_qps: _Optional[float] = ..., revision: _Optional[int] = ..., retiring: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ..., rollout: _Optional[str] = ...) -> None: ...

class StartDeploymentResponse(_message.Message):
    __slots__ = ("allocation", "deployment", "dry_run")
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    allocation: Allocation
    deployment: Deployment
    dry_run: bool
    def __init__(self, allocation: _Optional[_Union[Allocation, _Mapping]] = ..., deployment: _Optional[_Union[Deployment, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class StopDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "request_id", "wait", "timeout")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    wait: bool
    timeout: _duration_pb2.Duration
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ..., wait: _Optional[bool] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StopDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class UpdateDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "spec", "update_mask", "request_id", "dry_run", "wait_for", "timeout")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    spec: StartDeploymentRequest
    update_mask: _field_mask_pb2.FieldMask
    request_id: str
    dry_run: bool
    wait_for: WaitFor
    timeout: _duration_pb2.Duration
    def __init__(self, deployment_id: _Optional[str] = ..., spec: _Optional[_Union[StartDeploymentRequest, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., request_id: _Optional[str] = ..., dry_run: _Optional[bool] = ..., wait_for: _Optional[_Union[WaitFor, str]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class UpdateDeploymentResponse(_message.Message):
    __slots__ = ("deployment", "dry_run")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    dry_run: bool
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class DeleteDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "request_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    request_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "view", "per_node_reasons")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    PER_NODE_REASONS_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    view: _common_pb2.View
    per_node_reasons: bool
    def __init__(self, deployment_id: _Optional[str] = ..., view: _Optional[_Union[_common_pb2.View, str]] = ..., per_node_reasons: _Optional[bool] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ("page", "view", "owner", "status", "model_id")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    page: _common_pb2.PageRequest
    view: _common_pb2.View
    owner: str
    status: _common_pb2.DeploymentStatus
    model_id: str
    def __init__(self, page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ..., view: _Optional[_Union[_common_pb2.View, str]] = ..., owner: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.DeploymentStatus, str]] = ..., model_id: _Optional[str] = ...) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments", "next_page_token")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    next_page_token: str
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDeploymentStatsRequest(_message.Message):
    __slots__ = ("deployment_id",)
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    def __init__(self, deployment_id: _Optional[str] = ...) -> None: ...

class NodeStats(_message.Message):
    __slots__ = ("node_id", "variant", "allocation_id", "routing_state", "reason", "stats")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTING_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    variant: str
    allocation_id: str
    routing_state: _common_pb2.RoutingState
    reason: str
    stats: _common_pb2.InferenceStats
    def __init__(self, node_id: _Optional[str] = ..., variant: _Optional[str] = ..., allocation_id: _Optional[str] = ..., routing_state: _Optional[_Union[_common_pb2.RoutingState, str]] = ..., reason: _Optional[str] = ..., stats: _Optional[_Union[_common_pb2.InferenceStats, _Mapping]] = ...) -> None: ...

class GetDeploymentStatsResponse(_message.Message):
    __slots__ = ("deployment_id", "status", "nodes", "total", "gateway", "gateways", "variants")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    status: _common_pb2.DeploymentStatus
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStats]
    total: _common_pb2.InferenceStats
    gateway: _common_pb2.InferenceStats
    gateways: _containers.RepeatedCompositeFieldContainer[GatewayCounters]
    variants: _containers.RepeatedCompositeFieldContainer[VariantScale]
    def __init__(self, deployment_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.DeploymentStatus, str]] = ..., nodes: _Optional[_Iterable[_Union[NodeStats, _Mapping]]] = ..., total: _Optional[_Union[_common_pb2.InferenceStats, _Mapping]] = ..., gateway: _Optional[_Union[_common_pb2.InferenceStats, _Mapping]] = ..., gateways: _Optional[_Iterable[_Union[GatewayCounters, _Mapping]]] = ..., variants: _Optional[_Iterable[_Union[VariantScale, _Mapping]]] = ...) -> None: ...

class VariantScale(_message.Message):
    __slots__ = ("variant", "autoscaling")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    variant: str
    autoscaling: AutoscalingStatus
    def __init__(self, variant: _Optional[str] = ..., autoscaling: _Optional[_Union[AutoscalingStatus, _Mapping]] = ...) -> None: ...

class GatewayCounters(_message.Message):
    __slots__ = ("gateway_id", "address", "stats", "last_report")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    address: str
    stats: _common_pb2.InferenceStats
    last_report: _timestamp_pb2.Timestamp
    def __init__(self, gateway_id: _Optional[str] = ..., address: _Optional[str] = ..., stats: _Optional[_Union[_common_pb2.InferenceStats, _Mapping]] = ..., last_report: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "after_seq")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    after_seq: int
    def __init__(self, deployment_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class WatchDeploymentResponse(_message.Message):
    __slots__ = ("deployment", "events", "resumed")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    events: _containers.RepeatedCompositeFieldContainer[DeploymentEvent]
    resumed: bool
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ..., events: _Optional[_Iterable[_Union[DeploymentEvent, _Mapping]]] = ..., resumed: _Optional[bool] = ...) -> None: ...

class DeploymentEvent(_message.Message):
    __slots__ = ("seq", "time", "kind", "reason", "from_status", "status", "node_id", "variant", "allocation_id", "from_routing_state", "routing_state", "revision", "from_allocations", "allocations")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FROM_STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ROUTING_STATE_FIELD_NUMBER: _ClassVar[int]
    ROUTING_STATE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FROM_ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    kind: EventKind
    reason: str
    from_status: _common_pb2.DeploymentStatus
    status: _common_pb2.DeploymentStatus
    node_id: str
    variant: str
    allocation_id: str
    from_routing_state: _common_pb2.RoutingState
    routing_state: _common_pb2.RoutingState
    revision: int
    from_allocations: int
    allocations: int
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[EventKind, str]] = ..., reason: _Optional[str] = ..., from_status: _Optional[_Union[_common_pb2.DeploymentStatus, str]] = ..., status: _Optional[_Union[_common_pb2.DeploymentStatus, str]] = ..., node_id: _Optional[str] = ..., variant: _Optional[str] = ..., allocation_id: _Optional[str] = ..., from_routing_state: _Optional[_Union[_common_pb2.RoutingState, str]] = ..., routing_state: _Optional[_Union[_common_pb2.RoutingState, str]] = ..., revision: _Optional[int] = ..., from_allocations: _Optional[int] = ..., allocations: _Optional[int] = ...) -> None: ...

class ListDeploymentEventsRequest(_message.Message):
    __slots__ = ("deployment_id", "after_seq", "page")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    after_seq: int
    page: _common_pb2.PageRequest
    def __init__(self, deployment_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListDeploymentEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[DeploymentEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[DeploymentEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
