"""Record keys and (de)serialization shared by every Store implementation.

Both backends keep records as serialized protobuf bytes, so the rules for
what a record's key is, which keys are acceptable and how a stored blob turns
back into a message live here once. A key that is empty (or a model version
below 1, since 0 means "the newest" in get_model) is a caller bug and raises
ValueError before anything is written. A blob that no longer parses means the
store was damaged outside of SQLite's guarantees: DataLoss, naming the record.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import message as _message

from control_plane.errors import DataLoss
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import models_pb2

M = TypeVar("M", bound=_message.Message)


def encode(record: _message.Message) -> bytes:
    """Serialize deterministically (equal messages give equal bytes)."""
    return record.SerializeToString(deterministic=True)


def decode(cls: type[M], blob: bytes, *, what: str) -> M:
    """Parse blob as cls; DataLoss naming `what` if it is not a valid message."""
    try:
        return cls.FromString(blob)
    except _message.DecodeError as exc:
        raise DataLoss(f"stored {what} is corrupt: {exc}") from exc


def _require(field: str, value: str) -> str:
    if not value:
        raise ValueError(f"{field} is required to store the record")
    return value


def model_key(model: models_pb2.Model) -> tuple[str, int]:
    model_id = _require("model_id", model.model_id)
    if model.version < 1:
        raise ValueError(f"model version must be >= 1 to store the model, got {model.version}")
    return model_id, model.version


def deployment_key(record: records_pb2.DeploymentRecord) -> str:
    return _require("deployment_id", record.deployment_id)


def allocation_key(record: records_pb2.AllocationRecord) -> str:
    return _require("allocation_id", record.allocation_id)


def node_key(record: records_pb2.NodeRecord) -> str:
    return _require("info.node_id", record.info.node_id)


def request_key(record: records_pb2.RequestRecord) -> str:
    return _require("request_id", record.request_id)


def event_log_key(record: records_pb2.EventLogRecord) -> str:
    return _require("deployment_id", record.deployment_id)


def api_key_key(record: records_pb2.ApiKeyRecord) -> str:
    return _require("key_id", record.key_id)
