import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from modelfleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Model(_message.Message):
    __slots__ = ("model_id", "version", "format", "model_bytes", "sha256", "state", "state_reason", "inputs", "outputs", "description", "created_at")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: int
    format: _common_pb2.ModelFormat
    model_bytes: int
    sha256: str
    state: _common_pb2.ModelState
    state_reason: str
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorSpec]
    description: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[int] = ..., format: _Optional[_Union[_common_pb2.ModelFormat, str]] = ..., model_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.ModelState, str]] = ..., state_reason: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.TensorSpec, _Mapping]]] = ..., description: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UploadModelMetadata(_message.Message):
    __slots__ = ("model_id", "version", "format", "description", "sha256", "total_bytes", "inputs", "outputs", "new_version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: int
    format: _common_pb2.ModelFormat
    description: str
    sha256: str
    total_bytes: int
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorSpec]
    new_version: bool
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[int] = ..., format: _Optional[_Union[_common_pb2.ModelFormat, str]] = ..., description: _Optional[str] = ..., sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.TensorSpec, _Mapping]]] = ..., new_version: _Optional[bool] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: UploadModelMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[UploadModelMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: int
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("model_id", "page")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    page: _common_pb2.PageRequest
    def __init__(self, model_id: _Optional[str] = ..., page: _Optional[_Union[_common_pb2.PageRequest, _Mapping]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model_id", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: int
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, deleted: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("model_id", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: int
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DownloadModelResponse(_message.Message):
    __slots__ = ("chunk", "offset", "total_bytes", "sha256")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    offset: int
    total_bytes: int
    sha256: str
    def __init__(self, chunk: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
