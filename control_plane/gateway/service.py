"""The inference gateway: `inference.GRPCInferenceService` on the control
plane, so a client needs one address (as with Elasticsearch's infer API).
This module owns the servicer and the ModelInfer path (routing, retry,
counting); the rest of the gateway room: control_plane.gateway.wire (reading
the request off the wire, stream framing), .limits (the token bucket),
.stats (GatewayStats), .channels (the channel pool to workers).

ModelInfer is proxied without re-encoding: the request arrives as raw bytes,
fields 1 and 2 (model_name, model_version) are read off the wire, the
request is validated strictly against the specs of the model it is routed
to (modelfleet.wire.v2, the worker's rules: a parse of a copy plus size checks, no tensor
decoded; a bad request gets INVALID_ARGUMENT and never reaches a worker),
and the original bytes go to a started worker over a channel kept per
worker address, with the allocation's worker token as `authorization`
(workers accept only the gateway, the agent and keys with `infer`) and, when
configured, over TLS. The worker's reply bytes (or its status, details and
trailers such as grpc-retry-pushback-ms) go back unchanged. The call's
deadline travels on.

ModelStreamInfer (Triton's bidirectional stream, as `tritonclient`'s
start_stream / async_stream_infer use it) takes each request through the
same path as a ModelInfer call, concurrently, and answers in completion
order; a refused request gets a ModelStreamInferResponse with
`error_message` and its id, and the stream goes on.

A call to a stopped deployment is answered UNAVAILABLE "deployment … is
stopped" before anything else about the request is looked at.

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

Every call is counted per deployment (GatewayStats): answered, rejected
(traffic limit, or a worker's full queue), timed out, cancelled by its
client, or failed; GetDeploymentStats shows these beside the workers' own
counters. Channels to workers that left the routing table are closed by
`prune_channels` (called by the control plane's reconcile loop).

Event-loop only. Routes, records and models come from a `RouteSource`
(control_plane.routes); in the control plane its routes are rebuilt after
every tick. Deployment records are read from the store once and then
kept with the change hub's version of that deployment: every change of a
deployment's spec (start, update, stop, delete) notifies the hub, so the
data path reads the store only after a change. For /metrics, `calls` counts
every call by (deployment, final gRPC status) and `limited` the traffic
limit's refusals.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from control_plane import errors
from control_plane.gateway import describe, statistics, versions
from control_plane.gateway.channels import ChannelPool
from control_plane.gateway.limits import TokenBucket
from control_plane.gateway.outliers import Outliers
from control_plane.gateway.stats import DurationHistogram, GatewayStats
from control_plane.gateway.wire import (
    IDENTITY,
    SERVICE,
    STREAM_REPLY_TAG,
    encode_varint,
    never_accepted,
    scan_model_name,
    stream_error,
    transport_failure,
)
from control_plane.routes import Route, RouteSource
from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.store.v1 import records_pb2
from modelfleet.streams import answer_concurrently
from modelfleet.wire import triton, v2

log = logging.getLogger(__name__)

UNKNOWN_DEPLOYMENT = "(unknown)"


_DEADLINE_SLACK_S = 0.05  # a cancel this close to the deadline is the deadline
_CODE_FIELDS = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "rejected_execution_count",
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout_count",
    grpc.StatusCode.CANCELLED: "cancelled_count",
}


class Gateway:
    def __init__(
        self,
        *,
        source: RouteSource,
        max_message_bytes: int,
        stats: GatewayStats | None = None,
        worker_credentials: grpc.ChannelCredentials | None = None,
        outliers: Outliers | None = None,
    ) -> None:
        self.source = source  # deployments, routes and models: all the gateway reads (control_plane.routes)
        self._channels = ChannelPool(max_message_bytes=max_message_bytes, credentials=worker_credentials)
        self.outliers = outliers or Outliers()  # workers out of the rotation (control_plane.gateway.outliers)
        # (model_id, version) -> the V2 rules of its specs; model versions never change
        self._specs: dict[tuple[str, int], v2.RequestRules] = {}
        self._inflight: collections.Counter[str] = collections.Counter()
        self._inflight_by_address: collections.Counter[str] = collections.Counter()
        self._buckets: dict[str, TokenBucket] = {}
        self.stats = stats or GatewayStats()
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self.limited: collections.Counter[str] = collections.Counter()
        self.durations = DurationHistogram()  # seconds per call, by deployment (/metrics)
        # deployment_id -> (hub version when read, the record); see the module docstring
        self._records: dict[str, tuple[int, records_pb2.DeploymentRecord]] = {}
        self._streams: set[asyncio.Task[Any]] = set()  # open ModelStreamInfer calls
        self._closing = False

    def end_streams(self) -> None:
        """For a shutdown: end every open ModelStreamInfer with UNAVAILABLE now (a
        stream would only wait out the server's grace period, then be cancelled)."""
        self._closing = True
        for task in self._streams:
            task.cancel()

    async def close(self) -> None:
        await self._channels.close()

    # ---- routing -------------------------------------------------------------------
    def _record(self, name: str) -> records_pb2.DeploymentRecord:
        """The deployment's record, from the cache while the hub saw no change of it.

        Callers must not mutate it (it is shared between calls)."""
        if not name:
            raise errors.InvalidArgument("model_name is required: the deployment id")
        version = self.source.version(name)
        cached = self._records.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        rec = self.source.deployment(name)
        if rec is None:
            self._records.pop(name, None)
            raise errors.NotFound(f"deployment '{name}' not found")
        self._records[name] = (version, rec)
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
        routes: Sequence[Route] = self.source.routes(rec.deployment_id)
        if exclude:
            routes = [r for r in routes if r.allocation_id not in exclude]
        variants = versions.select(rec, version)
        if version:
            names = {v.name for v in variants}
            routes = [r for r in routes if r.variant in names]
        if len(variants) > 1 or any(r.variant != variants[0].name for r in routes):
            by_variant: dict[str, list[Route]] = collections.defaultdict(list)
            for r in routes:
                by_variant[r.variant].append(r)
            weighted = [(v.name, v.weight) for v in variants if by_variant.get(v.name) and v.weight > 0]
            if weighted:
                chosen = random.choices([n for n, _ in weighted], weights=[w for _, w in weighted])[0]
                routes = by_variant[chosen]
        if not routes:
            raise errors.Unavailable(f"deployment '{rec.deployment_id}' has no started worker to serve the call")
        routes = self._in_rotation(rec.deployment_id, routes)
        if len(routes) == 1:
            return routes[0]
        low = min(self._inflight[r.allocation_id] for r in routes)
        return random.choice([r for r in routes if self._inflight[r.allocation_id] == low])

    def _in_rotation(self, deployment_id: str, routes: Sequence[Route]) -> Sequence[Route]:
        """The routes outlier ejection leaves in (all of them rather than none); a worker whose
        channel is in TRANSIENT_FAILURE is ejected here, before any call waits on it, and one due
        for its probe stays out while its channel is not connected."""
        for route in routes:
            state = self._channels.state(route.address)
            if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                self.outliers.channel_failed(route.address, deployment=deployment_id)
            elif state not in (None, grpc.ChannelConnectivity.READY) and self.outliers.due(route.address):
                # probe: a trial call only over a live connection, so none waits on a silent host
                self._channels.state(route.address, connect=True)
                self.outliers.channel_failed(route.address, deployment=deployment_id, reason=f"probe: channel {state.name}")
        return self.outliers.routable(routes, _address)

    # ---- validation ----------------------------------------------------------------
    def _model_specs(self, model: tuple[str, int]) -> v2.RequestRules | None:
        specs = self._specs.get(model)
        if specs is None:
            record = self.source.model(*model)
            if record is None:
                return None
            if len(self._specs) > 10_000:
                self._specs.clear()
            specs = self._specs[model] = v2.RequestRules.of_model(record, error=errors.InvalidArgument)
        return specs

    def validate(self, request: bytes, model: tuple[str, int]) -> None:
        """INVALID_ARGUMENT unless request fits `model` (model_id, version): see modelfleet.wire.v2."""
        specs = self._model_specs(model)
        if specs is not None:
            specs.check(specs.parse(request))

    def model_before_routing(self, rec: records_pb2.DeploymentRecord, version: str) -> tuple[str, int] | None:
        """The model a call will reach when that is known before routing: the one model of the
        variants `version` selects (control_plane.gateway.versions), while no other (retiring)
        variant serves an unversioned call; else None."""
        variants = versions.select(rec, version)
        models = {(v.model_id, v.model_version) for v in variants}
        if len(models) != 1:
            return None
        if not version and any(r.variant not in {v.name for v in variants} for r in self.source.routes(rec.deployment_id)):
            return None
        return models.pop()

    async def prune_channels(self) -> int:
        """Close channels to workers that no route names and no call uses. Returns how many."""
        live = self.source.live_addresses()
        self.outliers.forget(keep=lambda a: a in live)
        return await self._channels.prune(keep=lambda a: a in live or bool(self._inflight_by_address[a]))

    # ---- RPCs -----------------------------------------------------------------------
    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await self.infer(request, context.time_remaining)
        except _Relayed as relayed:
            await context.abort(relayed.code, relayed.details, relayed.trailers)
            raise AssertionError("unreachable") from None

    async def ModelStreamInfer(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Triton's bidirectional stream: each request is routed and forwarded like a ModelInfer
        call, concurrently; answers come back in completion order as ModelStreamInferResponse
        (the worker's reply bytes wrapped without re-encoding), and a refused request gets
        `error_message` while the stream goes on."""

        async def one(request: bytes) -> bytes:
            try:
                reply = await self.infer(request, context.time_remaining)
                return STREAM_REPLY_TAG + encode_varint(len(reply)) + reply
            except (errors.ModelfleetError, _Relayed) as exc:
                return stream_error(request, exc.message if isinstance(exc, errors.ModelfleetError) else exc.details)
            except Exception:
                log.exception("unexpected error in ModelStreamInfer")
                return stream_error(request, "internal error")

        if self._closing:
            raise errors.Unavailable("the gateway is shutting down; retry against another one or once it is back")
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            async for answer in answer_concurrently(requests, one):
                yield answer
        except asyncio.CancelledError:
            if not self._closing:
                raise  # the client went away
            raise errors.Unavailable("the gateway is shutting down; retry against another one or once it is back") from None
        finally:
            self._streams.discard(task)

    async def infer(self, request: bytes, time_remaining: Callable[[], float | None]) -> bytes:
        """One V2 request (serialized) -> the worker's reply bytes; counted for stats and /metrics.

        Raises:
            ModelfleetError: refused here (unknown deployment, bad request, traffic limit, no worker).
            _Relayed: the worker's error status, to pass on unchanged.
        """
        label, status = UNKNOWN_DEPLOYMENT, "OK"  # for /metrics; unknown names share one label
        started = time.perf_counter()
        try:
            name, version = scan_model_name(request)
            rec = self._record(name)
            label = rec.deployment_id
            if rec.desired == records_pb2.DESIRED_STATE_STOPPED:  # before validation: no request can help
                raise errors.Unavailable(f"deployment '{rec.deployment_id}' is stopped")
            # Validate before routing when the model is known, so a bad request is
            # refused even while no worker serves; else once the route is chosen.
            checked = self.model_before_routing(rec, version)
            if checked is not None:
                self.validate(request, checked)
            try:
                self._limit(rec)
            except errors.ResourceExhausted:
                self.stats.count(rec.deployment_id, "rejected_execution_count")
                self.limited[rec.deployment_id] += 1
                raise
            field = "error_count"
            try:
                reply = await self._forward(rec, version, request, time_remaining, checked=checked)
                field = "inference_count"
                return reply
            except _Relayed as relayed:
                field = _CODE_FIELDS.get(relayed.code, "error_count")
                status = relayed.code.name
                raise
            except asyncio.CancelledError:
                # gRPC cancels the handler when the client cancels, and when the deadline passes
                remaining = time_remaining()
                field = "timeout_count" if remaining is not None and remaining <= _DEADLINE_SLACK_S else "cancelled_count"
                raise
            finally:
                self.stats.count(rec.deployment_id, field)
        except errors.ModelfleetError as exc:
            status = exc.code
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        finally:
            self.calls[(label, status)] += 1
            self.durations.observe(label, time.perf_counter() - started)

    async def _forward(
        self,
        rec: records_pb2.DeploymentRecord,
        version: str,
        request: bytes,
        time_remaining: Callable[[], float | None],
        *,
        checked: tuple[str, int] | None,
    ) -> bytes:
        """Send the call to a worker (retried once elsewhere if it was never accepted), validated
        against the routed variant's model unless it already was (`checked`)."""
        tried: set[str] = set()
        while True:
            route = self.pick(rec, version, exclude=frozenset(tried))
            if route.model != checked:
                self.validate(request, route.model)
                checked = route.model
            self._inflight[route.allocation_id] += 1
            self._inflight_by_address[route.address] += 1
            try:
                return await self._send(route, request, time_remaining, deployment=rec.deployment_id)
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or ""
                if never_accepted(exc.code(), details) and not tried:
                    tried.add(route.allocation_id)
                    log.info("worker %s did not accept a call (%s); retrying elsewhere", route.address, details)
                    continue
                raise _Relayed(exc.code(), details, tuple(exc.trailing_metadata() or ())) from None
            finally:
                for counter, key in ((self._inflight, route.allocation_id), (self._inflight_by_address, route.address)):
                    counter[key] -= 1
                    if not counter[key]:
                        del counter[key]

    async def _send(self, route: Route, request: bytes, time_remaining: Callable[[], float | None], *, deployment: str) -> bytes:
        """One call to the worker of route; its outcome goes to outlier ejection (.outliers)."""
        metadata = (("authorization", f"Bearer {route.token}"),) if route.token else None
        trial = self.outliers.begin(route.address)
        try:
            reply: bytes = await self._channels.call(route.address)(request, timeout=time_remaining(), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if transport_failure(exc.code(), details):
                broken = self._channels.state(route.address) != grpc.ChannelConnectivity.READY
                self.outliers.failed(
                    route.address, deployment=deployment, trial=trial, reason=f"{exc.code().name} {details}", at_once=broken
                )
            else:
                self.outliers.answered(route.address, trial=trial)
            raise
        except asyncio.CancelledError:
            remaining = time_remaining()  # gRPC cancels the handler when the client's deadline passes
            if remaining is not None and remaining <= _DEADLINE_SLACK_S:
                self.outliers.failed(route.address, deployment=deployment, trial=trial, reason="deadline passed")
            else:
                self.outliers.abandoned(route.address, trial=trial)
            raise
        self.outliers.answered(route.address, trial=trial)
        return reply

    async def ServerLive(self, request: pb.ServerLiveRequest, context: object) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: object) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: object) -> pb.ModelReadyResponse:
        rec = self._record(request.name)
        try:
            names = {v.name for v in versions.select(rec, request.version)}
        except errors.NotFound:
            return pb.ModelReadyResponse(ready=False)
        routes = self.source.routes(rec.deployment_id)
        return pb.ModelReadyResponse(ready=any(not request.version or r.variant in names for r in routes))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: object) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="modelfleet", version="0.1.0", extensions=list(triton.EXTENSIONS))

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: object) -> pb.RepositoryModelLoadResponse:
        raise errors.Unimplemented(triton.UNSERVED["RepositoryModelLoad"])

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: object) -> pb.RepositoryModelUnloadResponse:
        raise errors.Unimplemented(triton.UNSERVED["RepositoryModelUnload"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: object) -> pb.ModelMetadataResponse:
        return describe.model_metadata(self.source, self._record(request.name), request.version)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: object) -> pb.ModelConfigResponse:
        return describe.model_config(self.source, self._record(request.name), request.version)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: object) -> pb.ModelStatisticsResponse:
        # as in Triton, a version counts only with a name
        recs = [self._record(request.name)] if request.name else self.source.deployments()
        version = request.version if request.name else ""
        return await statistics.model_statistics(source=self.source, method=self._channels.method, recs=recs, version=version)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: object) -> pb.RepositoryIndexResponse:
        out = pb.RepositoryIndexResponse()
        for rec in self.source.deployments():
            ready = bool(self.source.routes(rec.deployment_id))
            if request.ready and not ready:
                continue
            out.models.add(name=rec.deployment_id, version="", state="READY" if ready else "UNAVAILABLE", reason=rec.status_reason)
        return out



def _address(route: Route) -> str:
    return route.address


class _Relayed(Exception):
    """A worker's error status, to be passed on to the client unchanged."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...]) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailers = trailers


Relayed = _Relayed  # for the REST room, which answers it with the HTTP status of its code

def add_gateway_to_server(gateway: Gateway, server: grpc.aio.Server) -> None:
    """Register the gateway; ModelInfer takes and returns raw bytes."""

    def unary(fn: Callable, req_cls: Any) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req_cls.FromString, response_serializer=lambda m: m.SerializeToString())

    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(gateway.ModelInfer, request_deserializer=IDENTITY, response_serializer=IDENTITY),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            gateway.ModelStreamInfer, request_deserializer=IDENTITY, response_serializer=IDENTITY
        ),
        "ServerLive": unary(gateway.ServerLive, pb.ServerLiveRequest),
        "ServerReady": unary(gateway.ServerReady, pb.ServerReadyRequest),
        "ModelReady": unary(gateway.ModelReady, pb.ModelReadyRequest),
        "ServerMetadata": unary(gateway.ServerMetadata, pb.ServerMetadataRequest),
        "ModelMetadata": unary(gateway.ModelMetadata, pb.ModelMetadataRequest),
        "ModelConfig": unary(gateway.ModelConfig, pb.ModelConfigRequest),
        "ModelStatistics": unary(gateway.ModelStatistics, pb.ModelStatisticsRequest),
        "RepositoryIndex": unary(gateway.RepositoryIndex, pb.RepositoryIndexRequest),
        "RepositoryModelLoad": unary(gateway.RepositoryModelLoad, pb.RepositoryModelLoadRequest),
        "RepositoryModelUnload": unary(gateway.RepositoryModelUnload, pb.RepositoryModelUnloadRequest),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
