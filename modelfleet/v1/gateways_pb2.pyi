from modelfleet.store.v1 import records_pb2 as _records_pb2
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
