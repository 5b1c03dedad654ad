"""What the gateway says about a deployment in Triton's terms: ModelMetadata
and ModelConfig (modelfleet.wire.triton), for the variants a V2 version
selects (control_plane.gateway.versions; the first when several). All comes
from the `RouteSource` (control_plane.routes): the deployment's record (the
variant's batching, threads and resources), the model version's specs and
the started workers. Pure functions, event-loop only.
"""

from __future__ import annotations

from control_plane.gateway import versions
from control_plane.routes import RouteSource
from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import models_pb2
from modelfleet.wire import triton

PLATFORMS = {1: "onnxruntime_onnx", 2: "pytorch_libtorch"}  # by modelfleet.v1.ModelFormat


def model_metadata(source: RouteSource, rec: records_pb2.DeploymentRecord, version: str) -> pb.ModelMetadataResponse:
    chosen = versions.select(rec, version)[0]
    model = source.model(chosen.model_id, chosen.model_version) or models_pb2.Model()
    out = pb.ModelMetadataResponse(name=rec.deployment_id, versions=versions.numbers(rec), platform=PLATFORMS.get(model.format, ""))
    for spec in model.inputs:
        out.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
    for spec in model.outputs:
        out.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
    return out


def model_config(source: RouteSource, rec: records_pb2.DeploymentRecord, version: str) -> pb.ModelConfigResponse:
    """Triton's ModelConfig of the selected variant; its instance group counts the model runs
    that may go at once over the variant's started workers (model_threads each)."""
    chosen = versions.select(rec, version)[0]
    model = source.model(chosen.model_id, chosen.model_version) or models_pb2.Model()
    started = sum(1 for r in source.routes(rec.deployment_id) if r.variant == chosen.name)
    config = triton.model_config(
        name=rec.deployment_id,
        platform=PLATFORMS.get(model.format, ""),
        inputs=model.inputs,
        outputs=model.outputs,
        max_batch_size=chosen.max_batch_size,
        max_queue_delay_us=chosen.max_queue_delay_us,
        instances=[triton.Instances(name=chosen.name, count=started * max(1, chosen.model_threads), gpu=chosen.resources.gpus > 0)],
    )
    return pb.ModelConfigResponse(config=config)
