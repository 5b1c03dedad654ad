import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from modelfleet.store.v1 import records_pb2 as _records_pb2
from modelfleet.v1 import common_pb2 as _common_pb2
from modelfleet.v1 import agent_pb2 as _agent_pb2
from modelfleet.v1 import models_pb2 as _models_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRoutesRequest(_message.Message):
    __slots__ = ("epoch", "revision", "gateway_id")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    revision: int
    gateway_id: str
    def __init__(self, epoch: _Optional[int] = ..., revision: _Optional[int] = ..., gateway_id: _Optional[str] = ...) -> None: ...

class GatewayRoute(_message.Message):
    __slots__ = ("allocation_id", "node_id", "variant", "address", "token", "model_id", "model_version")
    ALLOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    allocation_id: str
    node_id: str
    variant: str
    address: str
    token: str
    model_id: str
    model_version: int
    def __init__(self, allocation_id: _Optional[str] = ..., node_id: _Optional[str] = ..., variant: _Optional[str] = ..., address: _Optional[str] = ..., token: _Optional[str] = ..., model_id: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class DeploymentRoutes(_message.Message):
    __slots__ = ("record", "routes")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    record: _records_pb2.DeploymentRecord
    routes: _containers.RepeatedCompositeFieldContainer[GatewayRoute]
    def __init__(self, record: _Optional[_Union[_records_pb2.DeploymentRecord, _Mapping]] = ..., routes: _Optional[_Iterable[_Union[GatewayRoute, _Mapping]]] = ...) -> None: ...

class RoutesUpdate(_message.Message):
    __slots__ = ("epoch", "revision", "snapshot", "deployments", "removed_deployments", "models", "has_credentials", "credentials", "gateways")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    HAS_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    revision: int
    snapshot: bool
    deployments: _containers.RepeatedCompositeFieldContainer[DeploymentRoutes]
    removed_deployments: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedCompositeFieldContainer[_models_pb2.Model]
    has_credentials: bool
    credentials: _agent_pb2.InferenceCredentials
    gateways: int
    def __init__(self, epoch: _Optional[int] = ..., revision: _Optional[int] = ..., snapshot: _Optional[bool] = ..., deployments: _Optional[_Iterable[_Union[DeploymentRoutes, _Mapping]]] = ..., removed_deployments: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[_Union[_models_pb2.Model, _Mapping]]] = ..., has_credentials: _Optional[bool] = ..., credentials: _Optional[_Union[_agent_pb2.InferenceCredentials, _Mapping]] = ..., gateways: _Optional[int] = ...) -> None: ...

class DeploymentCounters(_message.Message):
    __slots__ = ("deployment_id", "stats")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    stats: _common_pb2.InferenceStats
    def __init__(self, deployment_id: _Optional[str] = ..., stats: _Optional[_Union[_common_pb2.InferenceStats, _Mapping]] = ...) -> None: ...

class ReportGatewayStatsRequest(_message.Message):
    __slots__ = ("gateway_id", "address", "epoch", "revision", "stale", "deployments")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    address: str
    epoch: int
    revision: int
    stale: bool
    deployments: _containers.RepeatedCompositeFieldContainer[DeploymentCounters]
    def __init__(self, gateway_id: _Optional[str] = ..., address: _Optional[str] = ..., epoch: _Optional[int] = ..., revision: _Optional[int] = ..., stale: _Optional[bool] = ..., deployments: _Optional[_Iterable[_Union[DeploymentCounters, _Mapping]]] = ...) -> None: ...

class ReportGatewayStatsResponse(_message.Message):
    __slots__ = ("report_interval_s",)
    REPORT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    report_interval_s: float
    def __init__(self, report_interval_s: _Optional[float] = ...) -> None: ...

class ListGatewaysRequest(_message.Message):
    __slots__ = ("page",)
    PAGE_FIELD_NUMBER: _ClassVar[int]
    page: _common_pb2.PageRequest
    def __init__(self, page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class GatewayInfo(_message.Message):
    __slots__ = ("gateway_id", "address", "embedded", "revision", "behind", "stale", "watching", "live", "last_report", "seconds_since_report")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    BEHIND_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    WATCHING_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_REPORT_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    address: str
    embedded: bool
    revision: int
    behind: int
    stale: bool
    watching: bool
    live: bool
    last_report: _timestamp_pb2.Timestamp
    seconds_since_report: float
    def __init__(self, gateway_id: _Optional[str] = ..., address: _Optional[str] = ..., embedded: _Optional[bool] = ..., revision: _Optional[int] = ..., behind: _Optional[int] = ..., stale: _Optional[bool] = ..., watching: _Optional[bool] = ..., live: _Optional[bool] = ..., last_report: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., seconds_since_report: _Optional[float] = ...) -> None: ...

class ListGatewaysResponse(_message.Message):
    __slots__ = ("gateways", "next_page_token")
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    gateways: _containers.RepeatedCompositeFieldContainer[GatewayInfo]
    next_page_token: str
    def __init__(self, gateways: _Optional[_Iterable[_Union[GatewayInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
