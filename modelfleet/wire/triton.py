"""Triton's ModelConfig (inference.ModelConfig, wire-identical to Triton's
model_config.proto) as modelfleet fills it, for the gateway and the workers
alike: the platform and its backend, `max_batch_size`, inputs and outputs
with Triton data types and dims, `dynamic_batching` when the variant batches,
and one `instance_group` of the model runs that may go at once.

Triton's dims leave out the batch dimension when `max_batch_size > 0`
(batching: every input's first dimension is the batch), and are the whole
shape otherwise; -1 is a dynamic dimension in both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol

from modelfleet.inference import model_config_pb2 as mc

BACKENDS = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch"}


class Spec(Protocol):
    """A tensor spec: modelfleet.v1.TensorSpec or the runtime's TensorSpec."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def shape(self) -> Sequence[int]: ...


@dataclasses.dataclass(frozen=True)
class Instances:
    """A group of model runs that may go at once: `count` of them, on GPUs or CPUs."""

    name: str
    count: int
    gpu: bool = False


def data_type(datatype: str) -> int:
    """A V2 datatype name ("FP32", "BYTES") as Triton's DataType (TYPE_FP32, TYPE_STRING)."""
    name = "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
    value = mc.DataType.DESCRIPTOR.values_by_name.get(name)
    return value.number if value is not None else mc.TYPE_INVALID


def model_config(
    *,
    name: str,
    platform: str,
    inputs: Iterable[Spec],
    outputs: Iterable[Spec],
    max_batch_size: int = 0,
    max_queue_delay_us: int = 0,
    instances: Sequence[Instances] = (),
) -> mc.ModelConfig:
    """The ModelConfig of a served model (see the module docstring)."""
    batching = max_batch_size > 0
    config = mc.ModelConfig(name=name, platform=platform, backend=BACKENDS.get(platform, ""), max_batch_size=max(0, max_batch_size))
    for spec in inputs:
        config.input.add(name=spec.name, data_type=data_type(spec.datatype), dims=_dims(spec.shape, batching=batching))
    for spec in outputs:
        config.output.add(name=spec.name, data_type=data_type(spec.datatype), dims=_dims(spec.shape, batching=batching))
    if batching:
        config.dynamic_batching.max_queue_delay_microseconds = max(0, max_queue_delay_us)
    for group in instances:
        kind = mc.ModelInstanceGroup.KIND_GPU if group.gpu else mc.ModelInstanceGroup.KIND_CPU
        config.instance_group.add(name=group.name, kind=kind, count=group.count)
    return config


def _dims(shape: Sequence[int], *, batching: bool) -> list[int]:
    return list(shape[1:]) if batching and shape else list(shape)


# Triton's protocol extensions served (ServerMetadata.extensions): ModelConfig
# and ModelStatistics. Not "model_repository": RepositoryIndex is served but
# loading and unloading are modelfleet's deployments (UNSERVED below).
EXTENSIONS = ("model_configuration", "statistics")

# Triton methods answered UNIMPLEMENTED, with the modelfleet call that does the job.
UNSERVED = {
    "RepositoryModelLoad": (
        "RepositoryModelLoad is not served: models are loaded by starting a deployment, "
        "modelfleet.v1.Deployments/StartDeployment at the control plane (modelfleet deployments start MODEL; "
        "a request with only deployment_id restarts a stopped one with its saved settings)"
    ),
    "RepositoryModelUnload": (
        "RepositoryModelUnload is not served: models are unloaded by stopping their deployment, "
        "modelfleet.v1.Deployments/StopDeployment at the control plane (modelfleet deployments stop ID)"
    ),
}
