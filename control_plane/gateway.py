"""The inference gateway: `inference.GRPCInferenceService` on the control
plane, so a client needs one address (as with Elasticsearch's infer API).

ModelInfer is proxied without decoding tensors: the request arrives as raw
bytes, only fields 1 and 2 (model_name, model_version) are read off the
wire, and the same bytes go to a started worker over a channel kept per
worker address; the worker's reply bytes (or its status, details and
trailers such as grpc-retry-pushback-ms) go back unchanged. The call's
deadline travels on.

Routing: the deployment's traffic limit (token bucket) first, then a variant
by weight (or the variant named by model_version), then the started worker
of that variant with the fewest calls in flight. A call the worker never
accepted is retried once on another worker: the connection could not be
made ("failed to connect to all addresses": the request never left), or the
worker answered UNAVAILABLE "worker is draining" / "worker is not serving"
(refused, or given up while still queued: never run). One that may have run
(the connection broke mid-call, a reset, any other status) is never
retried. The client's deadline travels on as the worker call's timeout, so
a call whose deadline passes while it waits in the worker's queue is never
run and frees its slot.

Event-loop only. The routing table is the reconciler's `routes`, rebuilt
after every tick.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable

import grpc

from control_plane import errors
from control_plane.reconciler import Reconciler, Route
from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import models_pb2

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
_PLATFORMS = {1: "onnxruntime_onnx", 2: "pytorch_libtorch"}
_IDENTITY: Callable[[bytes], bytes] = lambda b: b  # noqa: E731


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise errors.InvalidArgument("malformed ModelInferRequest: bad varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def scan_model_name(buf: bytes) -> tuple[str, str]:
    """(model_name, model_version) from a serialized ModelInferRequest, without
    decoding (or copying) the tensors."""
    name = version = ""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise errors.InvalidArgument("malformed ModelInferRequest: truncated field")
            if field in (1, 2):
                try:
                    text = buf[i : i + length].decode()
                except UnicodeDecodeError as exc:
                    raise errors.InvalidArgument("malformed ModelInferRequest: model_name is not UTF-8") from exc
                if field == 1:
                    name = text
                else:
                    version = text
            i += length
        else:
            raise errors.InvalidArgument(f"malformed ModelInferRequest: wire type {wire}")
    return name, version


# UNAVAILABLE details that prove the worker never ran the call.
_NOT_ACCEPTED_PREFIXES = ("worker is draining", "worker is not serving")
_NOT_CONNECTED = "failed to connect to all addresses"


def never_accepted(code: grpc.StatusCode, details: str) -> bool:
    """True only when the call certainly never ran, so a retry elsewhere is safe."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return False
    return details.startswith(_NOT_ACCEPTED_PREFIXES) or _NOT_CONNECTED in details


class TokenBucket:
    """calls per second with a small burst (a tenth of a second's worth, at least 1)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, rate / 10)
        self.tokens = self.burst
        self._clock = clock
        self._last = clock()

    def take(self) -> float:
        """0 if a call may pass now, else the seconds until one may."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Gateway:
    def __init__(self, *, reconciler: Reconciler, max_message_bytes: int) -> None:
        self.reconciler = reconciler
        self.store = reconciler.store
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channels: dict[str, tuple[grpc.aio.Channel, grpc.aio.UnaryUnaryMultiCallable]] = {}
        self._inflight: collections.Counter[str] = collections.Counter()
        self._buckets: dict[str, TokenBucket] = {}

    async def close(self) -> None:
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()

    # ---- routing -------------------------------------------------------------------
    def _record(self, name: str) -> records_pb2.DeploymentRecord:
        if not name:
            raise errors.InvalidArgument("model_name is required: the deployment id")
        rec = self.store.get_deployment(name)
        if rec is None:
            raise errors.NotFound(f"deployment '{name}' not found")
        return rec

    def _limit(self, rec: records_pb2.DeploymentRecord) -> None:
        qps = rec.spec.traffic_limit_qps
        if qps <= 0:
            self._buckets.pop(rec.deployment_id, None)
            return
        bucket = self._buckets.get(rec.deployment_id)
        if bucket is None or bucket.rate != qps:
            bucket = self._buckets[rec.deployment_id] = TokenBucket(qps)
        wait = bucket.take()
        if wait:
            raise errors.ResourceExhausted(
                f"traffic limit of {qps:g} calls per second exceeded for deployment '{rec.deployment_id}'",
                trailers={"grpc-retry-pushback-ms": str(max(1, int(wait * 1000)))},
            )

    def pick(self, rec: records_pb2.DeploymentRecord, version: str, *, exclude: frozenset[str] = frozenset()) -> Route:
        routes = [r for r in self.reconciler.routes.get(rec.deployment_id, []) if r.allocation_id not in exclude]
        if version:
            names = {v.name for v in rec.spec.variants}
            if version not in names:
                raise errors.NotFound(f"deployment '{rec.deployment_id}' has no variant '{version}' (variants: {', '.join(sorted(names))})")
            routes = [r for r in routes if r.variant == version]
        else:
            by_variant: dict[str, list[Route]] = collections.defaultdict(list)
            for r in routes:
                by_variant[r.variant].append(r)
            weighted = [(v.name, v.weight) for v in rec.spec.variants if by_variant.get(v.name) and v.weight > 0]
            if weighted:
                chosen = random.choices([n for n, _ in weighted], weights=[w for _, w in weighted])[0]
                routes = by_variant[chosen]
        if not routes:
            raise errors.Unavailable(f"deployment '{rec.deployment_id}' has no started worker to serve the call")
        low = min(self._inflight[r.allocation_id] for r in routes)
        return random.choice([r for r in routes if self._inflight[r.allocation_id] == low])

    def _call(self, address: str) -> grpc.aio.UnaryUnaryMultiCallable:
        entry = self._channels.get(address)
        if entry is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            call = channel.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=_IDENTITY, response_deserializer=_IDENTITY)
            entry = self._channels[address] = (channel, call)
        return entry[1]

    # ---- RPCs -----------------------------------------------------------------------
    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name, version = scan_model_name(request)
        rec = self._record(name)
        self._limit(rec)
        tried: set[str] = set()
        while True:
            route = self.pick(rec, version, exclude=frozenset(tried))
            self._inflight[route.allocation_id] += 1
            try:
                return await self._call(route.address)(request, timeout=context.time_remaining())  # type: ignore[no-any-return]
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or ""
                if never_accepted(exc.code(), details) and not tried:
                    tried.add(route.allocation_id)
                    log.info("worker %s did not accept a call (%s); retrying elsewhere", route.address, details)
                    continue
                await context.abort(exc.code(), details, tuple(exc.trailing_metadata() or ()))
            finally:
                self._inflight[route.allocation_id] -= 1
                if not self._inflight[route.allocation_id]:
                    del self._inflight[route.allocation_id]

    async def ServerLive(self, request: pb.ServerLiveRequest, context: object) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: object) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: object) -> pb.ModelReadyResponse:
        rec = self._record(request.name)
        routes = self.reconciler.routes.get(rec.deployment_id, [])
        return pb.ModelReadyResponse(ready=any(not request.version or r.variant == request.version for r in routes))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: object) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="modelfleet", version="0.1.0", extensions=["model_repository", "statistics"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: object) -> pb.ModelMetadataResponse:
        rec = self._record(request.name)
        variants = list(rec.spec.variants)
        chosen = next((v for v in variants if v.name == request.version), None) if request.version else variants[0]
        if chosen is None:
            raise errors.NotFound(f"deployment '{rec.deployment_id}' has no variant '{request.version}'")
        model = self.store.get_model(chosen.model_id, chosen.model_version) or models_pb2.Model()
        out = pb.ModelMetadataResponse(name=rec.deployment_id, versions=[v.name for v in variants], platform=_PLATFORMS.get(model.format, ""))
        for spec in model.inputs:
            out.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in model.outputs:
            out.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return out

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: object) -> pb.ModelStatisticsResponse:
        recs = [self._record(request.name)] if request.name else self.store.list_deployments()
        out = pb.ModelStatisticsResponse()
        fleet = self.reconciler.fleet
        for rec in recs:
            for variant in rec.spec.variants:
                if request.version and variant.name != request.version:
                    continue
                item = out.model_stats.add(name=rec.deployment_id, version=variant.name)
                for alloc in self.store.list_allocations(deployment_id=rec.deployment_id):
                    stats = fleet.stats(alloc.node_id, alloc.allocation_id) if alloc.variant == variant.name else None
                    if stats is None:
                        continue
                    item.inference_count += stats.inference_count
                    item.execution_count += stats.inference_count
                    ns = int(stats.average_inference_time_ms * 1e6 * stats.inference_count)
                    item.inference_stats.success.count += stats.inference_count
                    item.inference_stats.success.ns += ns
                    item.inference_stats.fail.count += stats.error_count
                    if stats.HasField("last_access"):
                        item.last_inference = max(item.last_inference, stats.last_access.ToMilliseconds())
        return out

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: object) -> pb.RepositoryIndexResponse:
        out = pb.RepositoryIndexResponse()
        for rec in self.store.list_deployments():
            ready = bool(self.reconciler.routes.get(rec.deployment_id))
            if request.ready and not ready:
                continue
            out.models.add(name=rec.deployment_id, version="", state="READY" if ready else "UNAVAILABLE", reason=rec.status_reason)
        return out


def add_gateway_to_server(gateway: Gateway, server: grpc.aio.Server) -> None:
    """Register the gateway; ModelInfer takes and returns raw bytes."""

    def unary(fn: Callable, req_cls: type) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req_cls.FromString, response_serializer=lambda m: m.SerializeToString())

    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(gateway.ModelInfer, request_deserializer=_IDENTITY, response_serializer=_IDENTITY),
        "ServerLive": unary(gateway.ServerLive, pb.ServerLiveRequest),
        "ServerReady": unary(gateway.ServerReady, pb.ServerReadyRequest),
        "ModelReady": unary(gateway.ModelReady, pb.ModelReadyRequest),
        "ServerMetadata": unary(gateway.ServerMetadata, pb.ServerMetadataRequest),
        "ModelMetadata": unary(gateway.ModelMetadata, pb.ModelMetadataRequest),
        "ModelStatistics": unary(gateway.ModelStatistics, pb.ModelStatisticsRequest),
        "RepositoryIndex": unary(gateway.RepositoryIndex, pb.RepositoryIndexRequest),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
