"""gRPC servicers of the inference worker: protobuf <-> `WorkerService`.

`InferenceServicer` serves inference.GRPCInferenceService (KServe V2,
wire-identical to Triton) and `WorkerControlServicer` serves
modelfleet.v1.WorkerControl. Each method converts, awaits the service and
converts back; domain errors propagate to the server's one interceptor,
which maps them to status codes. Everything runs on the asyncio loop.

ModelStreamInfer (Triton's bidirectional stream) runs each request as it
arrives, concurrently, and answers in completion order
(modelfleet.streams, at most 1024 requests in flight per stream); a request that
fails gets a ModelStreamInferResponse with `error_message` (and its id in
`infer_response`) and the stream goes on, as in Triton. Each request is
counted in the status counters like a ModelInfer call.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from google.protobuf import timestamp_pb2

from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.inference import grpc_service_pb2_grpc as pb_grpc
from modelfleet.streams import answer_concurrently
from modelfleet.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from modelfleet.wire import triton
from node_agent.runtime.base import TensorSpec
from node_agent.worker.codec import RequestDecoder, encode_infer_response
from node_agent.worker.errors import Unimplemented, WorkerError
from node_agent.worker.service import WorkerService, rss_bytes
from node_agent.worker.stats import Duration, StatsSnapshot

SERVER_NAME = "modelfleet-worker"
logger = logging.getLogger(__name__)


def _server_version() -> str:
    try:
        return importlib.metadata.version("modelfleet")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _deadline(context: Any) -> float | None:
    """The call's gRPC deadline as a time.monotonic() value (None: no deadline)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _tensor_metadata(specs: Sequence[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


def _duration(value: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=value.count, ns=value.ns)


def inference_stats_pb(snap: StatsSnapshot) -> common_pb2.InferenceStats:
    """The Elasticsearch-style counters as modelfleet.v1.InferenceStats."""
    return common_pb2.InferenceStats(
        inference_count=snap.inference_count,
        average_inference_time_ms=snap.average_inference_time_ms,
        error_count=snap.error_count,
        rejected_execution_count=snap.rejected_execution_count,
        timeout_count=snap.timeout_count,
        number_of_pending_requests=snap.number_of_pending_requests,
        peak_throughput_per_minute=snap.peak_throughput_per_minute,
        throughput_last_minute=snap.throughput_last_minute,
        last_access=_timestamp(snap.last_access),
        start_time=_timestamp(snap.start_time),
        cancelled_count=snap.cancelled_count,
    )


def model_statistics_pb(
    snap: StatsSnapshot, *, name: str, version: str, batch_sizes: dict[int, int] | None = None
) -> pb.ModelStatistics:
    """The same counters as a KServe V2 ModelStatistics entry, counted as
    Triton does: inference_count counts inferences (a batched call of N rows
    is N), success/fail count calls; with `batch_sizes` (model runs by the
    batch size they executed) execution_count counts model runs and
    batch_stats lists them by size."""
    runs = sum(batch_sizes.values()) if batch_sizes else snap.inference_count
    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=int(snap.last_inference * 1000) if snap.last_inference else 0,
        inference_count=snap.inferences,
        execution_count=runs,
        batch_stats=[
            pb.InferBatchStatistics(batch_size=size, compute_infer=pb.StatisticDuration(count=count))
            for size, count in sorted((batch_sizes or {}).items())
        ],
        inference_stats=pb.InferStatistics(
            success=_duration(snap.success),
            fail=_duration(snap.fail),
            queue=_duration(snap.queue),
            compute_input=_duration(snap.compute_input),
            compute_infer=_duration(snap.compute_infer),
            compute_output=_duration(snap.compute_output),
        ),
    )


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService for the one model this worker serves."""

    def __init__(self, service: WorkerService) -> None:
        self._service = service
        self._decoder = RequestDecoder(inputs=service.inputs, outputs=service.outputs)

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        self._service.check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self._service.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=_server_version(), extensions=list(triton.EXTENSIONS))

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Any) -> pb.RepositoryModelLoadResponse:
        raise Unimplemented(triton.UNSERVED["RepositoryModelLoad"])

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: Any) -> pb.RepositoryModelUnloadResponse:
        raise Unimplemented(triton.UNSERVED["RepositoryModelUnload"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        service = self._service
        service.check_model(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=service.name,
            versions=list(service.versions()[:1]),
            platform=service.platform,
            inputs=_tensor_metadata(service.inputs),
            outputs=_tensor_metadata(service.outputs),
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        service = self._service
        service.check_model(request.name, request.version)
        batching = service.batching
        config = triton.model_config(
            name=service.name,
            platform=service.platform,
            inputs=service.inputs,
            outputs=service.outputs,
            max_batch_size=batching.max_batch_size if batching else 0,
            max_queue_delay_us=round(batching.max_queue_delay_s * 1e6) if batching else 0,
            instances=[triton.Instances(name=service.version, count=service.model_threads, gpu=service.on_gpu)],
        )
        return pb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await self._infer(request, _deadline(context))

    async def _infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        service = self._service
        service.check_model(request.model_name, request.model_version)
        decoded = self._decoder.decode(request)
        outputs = await service.infer(decoded, deadline=deadline)
        return encode_infer_response(outputs, model_name=service.name, model_version=service.version, request_id=decoded.id)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        deadline = _deadline(context)

        async def one(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            try:
                reply = await self._infer(request, deadline)
                self._service.stats.record_status("OK")
                return pb.ModelStreamInferResponse(infer_response=reply)
            except WorkerError as exc:
                code, message = exc.code, exc.message
            except Exception:
                logger.exception("unexpected error in ModelStreamInfer")
                code, message = "INTERNAL", "internal error"
            self._service.stats.record_status(code)
            named = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
            return pb.ModelStreamInferResponse(error_message=message, infer_response=named)

        async for answer in answer_concurrently(requests, one):
            yield answer

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        service = self._service
        if request.name:  # "" asks for every model, as in Triton
            service.check_model(request.name, request.version)
        stats = model_statistics_pb(
            service.snapshot(), name=service.name, version=service.versions()[0], batch_sizes=service.stats.batch_sizes()
        )
        return pb.ModelStatisticsResponse(model_stats=[stats])

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        service = self._service
        state = "READY" if service.ready else "UNAVAILABLE"
        reason = "" if service.ready else f"worker is {service.state.value.lower()}"
        if request.ready and not service.ready:
            return pb.RepositoryIndexResponse()
        entry = pb.RepositoryIndexResponse.ModelIndex(name=service.name, version=service.versions()[0], state=state, reason=reason)
        return pb.RepositoryIndexResponse(models=[entry])


class WorkerControlServicer(worker_pb2_grpc.WorkerControlServicer):
    """modelfleet.v1.WorkerControl: what the node agent asks of its worker."""

    def __init__(self, service: WorkerService, *, default_drain_timeout: float) -> None:
        self._service = service
        self._default_drain_timeout = default_drain_timeout

    async def GetWorkerStats(
        self, request: worker_pb2.GetWorkerStatsRequest, context: Any
    ) -> worker_pb2.GetWorkerStatsResponse:
        return worker_pb2.GetWorkerStatsResponse(stats=inference_stats_pb(self._service.snapshot()), rss_bytes=rss_bytes())

    async def Drain(self, request: worker_pb2.DrainRequest, context: Any) -> worker_pb2.DrainResponse:
        timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else 0.0
        outcome = await self._service.drain(timeout if timeout > 0 else self._default_drain_timeout)
        return worker_pb2.DrainResponse(completed=outcome.completed, abandoned=outcome.abandoned)
