"""Deployment API logic (transport-free): start, stop, update, delete, get,
list, stats and watch, with the Elasticsearch start semantics.

Start validates and normalizes the request into a spec whose `variants`
always hold the model versions to run (a single-model request becomes one
variant of weight 100), resolves model versions, refuses what can never be
placed (RESOURCE_EXHAUSTED naming the shortfall), writes the intent to the
store (durable before anything is sent), runs a reconcile tick and then
waits on the change hub until `wait_for` holds or `timeout` passes
(DEADLINE_EXCEEDED; the deployment keeps starting).

Mutations (start, stop, update, delete) with a `request_id` are idempotent:
the id and a digest of the request are stored in the same transaction as
the intent, so after an ambiguous failure (a timeout, a connection lost, the
control plane killed after its commit) a retry with the same id returns the
same deployment and changes nothing again: no second revision, no second
allocation, no "already exists". Delete stores the view it returned, so a
retried delete answers the same deployment although it is gone. A reused id
with a different request is INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator

from google.protobuf import duration_pb2

from control_plane import errors, scheduler, views
from control_plane.hub import ChangeHub
from control_plane.ids import check_id
from control_plane.reconciler import Reconciler, now_ts
from control_plane.registry import ModelRegistry
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, deployments_pb2

RUNNING = records_pb2.DESIRED_STATE_RUNNING
STOPPED = records_pb2.DESIRED_STATE_STOPPED

DEFAULT_TIMEOUT_S = 20.0
MAX_TIMEOUT_S = 3600.0
DEFAULT_QUEUE_CAPACITY = 1024
MAX_QUEUE_CAPACITY = 1_000_000
MAX_THREADS = 256
AUTO_STOP_HOURS = range(1, 25)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_WAIT_NAMES = {
    deployments_pb2.WAIT_FOR_STARTING: "starting",
    deployments_pb2.WAIT_FOR_STARTED: "started",
    deployments_pb2.WAIT_FOR_FULLY_ALLOCATED: "fully_allocated",
}
_ALLOC_NAMES = {v: k.removeprefix("ALLOCATION_STATE_").lower() for k, v in common_pb2.AllocationState.items()}


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _digest(message: object, *, method: str) -> str:
    data = message.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
    return hashlib.sha256(method.encode() + b"\0" + data).hexdigest()


class DeploymentService:
    def __init__(
        self,
        *,
        reconciler: Reconciler,
        hub: ChangeHub,
        registry: ModelRegistry,
        default_auto_stop_s: int = 0,
    ) -> None:
        self.reconciler = reconciler
        self.store = reconciler.store
        self.hub = hub
        self.registry = registry
        self.default_auto_stop_s = default_auto_stop_s

    # ---- validation ----------------------------------------------------------------
    def normalize(self, req: deployments_pb2.StartDeploymentRequest) -> deployments_pb2.StartDeploymentRequest:
        """The request with defaults applied and model versions resolved."""
        spec = deployments_pb2.StartDeploymentRequest()
        spec.CopyFrom(req)
        spec.request_id = ""
        spec.dry_run = False
        single = ("model_id", "model_version", "inference_threads", "model_threads", "queue_capacity", "instances", "resources", "env")
        if spec.variants:
            set_fields = [f for f in single if _is_set(spec, f)]
            if set_fields:
                raise errors.InvalidArgument(f"when variants is set, {', '.join(set_fields)} must be empty (set them per variant)")
            total = sum(v.weight for v in spec.variants)
            if total != 100:
                raise errors.InvalidArgument(f"variants weights sum to {total}; they must sum to 100")
        else:
            if not spec.model_id:
                raise errors.InvalidArgument("model_id is required")
            spec.variants.add(
                model_id=spec.model_id,
                model_version=spec.model_version,
                weight=100,
                inference_threads=spec.inference_threads,
                model_threads=spec.model_threads,
                queue_capacity=spec.queue_capacity,
                instances=spec.instances,
                resources=spec.resources,
                env=dict(spec.env),
            )
            for name in single:
                spec.ClearField(name)
        spec.deployment_id = check_id("deployment_id", spec.deployment_id or spec.variants[0].model_id)
        names: set[str] = set()
        for i, variant in enumerate(spec.variants):
            self._normalize_variant(variant, field=f"variants[{i}]" if len(spec.variants) > 1 else "")
            if variant.name in names:
                raise errors.InvalidArgument(f"variant name {variant.name!r} is used twice")
            names.add(variant.name)
        timeout = _seconds(spec.timeout) if spec.HasField("timeout") else DEFAULT_TIMEOUT_S
        if not 0 <= timeout <= MAX_TIMEOUT_S:
            raise errors.InvalidArgument(f"timeout {timeout:g}s is out of range: 0 to {MAX_TIMEOUT_S:g}s")
        spec.timeout.FromNanoseconds(int(timeout * 1e9))
        if spec.wait_for == deployments_pb2.WAIT_FOR_UNSPECIFIED:
            spec.wait_for = deployments_pb2.WAIT_FOR_STARTED
        if spec.HasField("auto_stop"):
            hours, rest = divmod(spec.auto_stop.seconds, 3600)
            if rest or spec.auto_stop.nanos or hours not in AUTO_STOP_HOURS:
                raise errors.InvalidArgument(f"auto_stop {_seconds(spec.auto_stop):g}s is invalid: use a whole number of hours from 1 to 24")
        elif self.default_auto_stop_s:
            spec.auto_stop.FromSeconds(self.default_auto_stop_s)
        if spec.traffic_limit_qps < 0:
            raise errors.InvalidArgument(f"traffic_limit_qps {spec.traffic_limit_qps:g} must be >= 0")
        return spec

    def _normalize_variant(self, variant: deployments_pb2.VariantSpec, *, field: str) -> None:
        prefix = f"{field}." if field else ""
        check_id(f"{prefix}model_id", variant.model_id)
        for name, default, limit in (
            ("inference_threads", 1, MAX_THREADS),
            ("model_threads", 1, MAX_THREADS),
            ("queue_capacity", DEFAULT_QUEUE_CAPACITY, MAX_QUEUE_CAPACITY),
        ):
            value = getattr(variant, name) or default
            if not 1 <= value <= limit:
                raise errors.InvalidArgument(f"{prefix}{name} {value} is out of range: 1 to {limit}")
            setattr(variant, name, value)
        for name in ("model_version", "instances", "max_batch_size", "max_queue_delay_us"):
            if getattr(variant, name) < 0:
                raise errors.InvalidArgument(f"{prefix}{name} {getattr(variant, name)} must be >= 0")
        res = variant.resources
        if res.cpus < 0 or res.memory_bytes < 0 or res.gpus < 0:
            raise errors.InvalidArgument(f"{prefix}resources must not be negative")
        for key, value in variant.env.items():
            if not _ENV_NAME.match(key):
                raise errors.InvalidArgument(f"{prefix}env name {key!r} is invalid: use letters, digits and '_', not starting with a digit")
            if "\0" in value:
                raise errors.InvalidArgument(f"{prefix}env {key}: the value contains a NUL byte")
        model = self.registry.resolve_deployable(variant.model_id, variant.model_version)
        variant.model_version = model.version
        if not variant.name:
            variant.name = f"{model.model_id}-v{model.version}"

    def _check_capacity(self, spec: deployments_pb2.StartDeploymentRequest) -> None:
        nodes = list(self.reconciler.node_views().values())
        for variant in spec.variants:
            model = self.reconciler.model_for(variant)
            demand = scheduler.demand_for(variant, model_bytes=model.model_bytes if model else 0)
            placement = scheduler.place(demand, nodes, current=())
            if placement.shortfall:
                raise errors.ResourceExhausted(f"could not start deployment '{spec.deployment_id}': {placement.shortfall}")

    # ---- idempotency -----------------------------------------------------------------
    def _replay(self, request_id: str, digest: str) -> records_pb2.RequestRecord | None:
        if not request_id:
            return None
        record = self.store.get_request(request_id)
        if record is not None and record.request_digest != digest:
            raise errors.InvalidArgument(f"request_id {request_id!r} was already used for a different request")
        return record

    def _remember(self, request_id: str, digest: str, method: str, response: bytes) -> None:
        """Record the request (call inside the intent's transaction). `response`
        is the deployment id, or for delete the serialized Deployment view."""
        if request_id:
            self.store.put_request(
                records_pb2.RequestRecord(
                    request_id=request_id,
                    method=method,
                    response=response,
                    request_digest=digest,
                    created_at=now_ts(),
                )
            )

    # ---- start ------------------------------------------------------------------------
    async def start(self, req: deployments_pb2.StartDeploymentRequest, *, owner: str) -> deployments_pb2.StartDeploymentResponse:
        digest = _digest(req, method="StartDeployment")
        replay = self._replay(req.request_id, digest)
        if replay is not None:
            deployment_id = replay.response.decode()
            replayed = self._get_record(deployment_id)
            if replayed.desired != RUNNING:  # stopped since: the same deployment, as it is now
                deployment = self.get(deployment_id)
                return deployments_pb2.StartDeploymentResponse(allocation=deployment.allocations[0], deployment=deployment)
            spec = replayed.spec
        else:
            spec = self.normalize(req)
            deployment_id = spec.deployment_id
            existing = self.store.get_deployment(deployment_id)
            if existing is not None and existing.desired == RUNNING:
                status = common_pb2.DeploymentStatus.Name(existing.status).removeprefix("DEPLOYMENT_STATUS_")
                raise errors.AlreadyExists(f"deployment '{deployment_id}' is already started (status {status}); stop it first or choose another deployment_id")
            self._check_capacity(spec)
            if req.dry_run:
                raise errors.InvalidArgument("dry_run is not supported yet")
            record = records_pb2.DeploymentRecord(
                deployment_id=deployment_id,
                spec=spec,
                desired=RUNNING,
                owner=owner,
                start_time=now_ts(),
                revision=(existing.revision + 1) if existing else 1,
                status=common_pb2.DEPLOYMENT_STATUS_DEPLOYING,
            )
            record.created_at.CopyFrom(existing.created_at if existing else record.start_time)
            with self.store.transaction():
                self.store.put_deployment(record)
                self._remember(req.request_id, digest, "StartDeployment", deployment_id.encode())
            self.hub.notify(deployment_id)
            self.reconciler.reconcile()
        await self._wait(deployment_id, spec.wait_for, _seconds(spec.timeout))
        deployment = self.get(deployment_id)
        return deployments_pb2.StartDeploymentResponse(allocation=deployment.allocations[0], deployment=deployment)

    def _reached(self, deployment_id: str, wait_for: int) -> tuple[bool, deployments_pb2.Deployment]:
        deployment = self.get(deployment_id)
        states = [a.allocation_state for a in deployment.allocations]
        if wait_for == deployments_pb2.WAIT_FOR_STARTING:
            return True, deployment
        if wait_for == deployments_pb2.WAIT_FOR_FULLY_ALLOCATED:
            return all(s == common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED for s in states), deployment
        ok = (common_pb2.ALLOCATION_STATE_STARTED, common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED)
        return all(s in ok for s in states), deployment

    async def _wait(self, deployment_id: str, wait_for: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = self.hub.version(deployment_id)
        while True:
            reached, deployment = self._reached(deployment_id, wait_for)
            if reached:
                return
            if deployment.status == common_pb2.DEPLOYMENT_STATUS_FAILED:
                raise errors.FailedPrecondition(f"deployment '{deployment_id}' failed: {deployment.status_reason}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                reached_names = ", ".join(_ALLOC_NAMES[a.allocation_state] for a in deployment.allocations)
                why = f" ({deployment.status_reason})" if deployment.status_reason else ""
                raise errors.DeadlineExceeded(
                    f"timed out after {timeout:g}s waiting for deployment '{deployment_id}' to be "
                    f"{_WAIT_NAMES[wait_for]}; allocation state is {reached_names}{why}; the deployment keeps starting"
                )
            seen = await self.hub.wait_change(deployment_id, seen, remaining)

    # ---- stop / delete / update -----------------------------------------------------
    async def stop(self, req: deployments_pb2.StopDeploymentRequest) -> deployments_pb2.StopDeploymentResponse:
        digest = _digest(req, method="StopDeployment")
        rec = self._get_record(req.deployment_id)
        if self._replay(req.request_id, digest) is None and rec.desired == RUNNING:
            rec.desired = STOPPED
            rec.stop_reason = "stopped by user"
            rec.revision += 1
            with self.store.transaction():
                self.store.put_deployment(rec)
                self._remember(req.request_id, digest, "StopDeployment", rec.deployment_id.encode())
            self.hub.notify(rec.deployment_id)
            self.reconciler.reconcile()
        if req.wait:
            timeout = _seconds(req.timeout) if req.HasField("timeout") else DEFAULT_TIMEOUT_S
            await self._wait_stopped(rec.deployment_id, timeout)
        return deployments_pb2.StopDeploymentResponse(deployment=self.get(rec.deployment_id))

    async def _wait_stopped(self, deployment_id: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = self.hub.version(deployment_id)
        while self._get_record(deployment_id).status != common_pb2.DEPLOYMENT_STATUS_STOPPED:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.DeadlineExceeded(f"timed out after {timeout:g}s waiting for deployment '{deployment_id}' to stop; it keeps stopping")
            seen = await self.hub.wait_change(deployment_id, seen, remaining)

    def delete(self, req: deployments_pb2.DeleteDeploymentRequest) -> deployments_pb2.DeleteDeploymentResponse:
        digest = _digest(req, method="DeleteDeployment")
        replay = self._replay(req.request_id, digest)
        if replay is not None:
            return deployments_pb2.DeleteDeploymentResponse(deployment=deployments_pb2.Deployment.FromString(replay.response))
        rec = self._get_record(req.deployment_id)
        if rec.desired == RUNNING or rec.status != common_pb2.DEPLOYMENT_STATUS_STOPPED:
            raise errors.FailedPrecondition(f"deployment '{rec.deployment_id}' is not stopped; stop it before deleting it")
        view = self.get(rec.deployment_id)
        with self.store.transaction():
            self.store.delete_deployment(rec.deployment_id)
            self._remember(req.request_id, digest, "DeleteDeployment", view.SerializeToString(deterministic=True))
        self.hub.notify(rec.deployment_id)
        return deployments_pb2.DeleteDeploymentResponse(deployment=view)

    def update(self, req: deployments_pb2.UpdateDeploymentRequest) -> deployments_pb2.UpdateDeploymentResponse:
        digest = _digest(req, method="UpdateDeployment")
        rec = self._get_record(req.deployment_id)
        if self._replay(req.request_id, digest) is not None:
            return deployments_pb2.UpdateDeploymentResponse(deployment=self.get(rec.deployment_id))
        paths = list(req.update_mask.paths)
        if not paths:
            raise errors.InvalidArgument("update_mask is empty: name the fields to update")
        supported = {"description", "traffic_limit_qps"}
        unsupported = [p for p in paths if p not in supported]
        if unsupported:
            raise errors.InvalidArgument(f"update_mask path(s) {', '.join(unsupported)} cannot be updated yet; supported: {', '.join(sorted(supported))}")
        if req.spec.traffic_limit_qps < 0:
            raise errors.InvalidArgument(f"traffic_limit_qps {req.spec.traffic_limit_qps:g} must be >= 0")
        for path in paths:
            setattr(rec.spec, path, getattr(req.spec, path))
        rec.revision += 1
        with self.store.transaction():
            self.store.put_deployment(rec)
            self._remember(req.request_id, digest, "UpdateDeployment", rec.deployment_id.encode())
        self.hub.notify(rec.deployment_id)
        return deployments_pb2.UpdateDeploymentResponse(deployment=self.get(rec.deployment_id))

    # ---- reads ------------------------------------------------------------------------
    def _get_record(self, deployment_id: str) -> records_pb2.DeploymentRecord:
        if not deployment_id:
            raise errors.InvalidArgument("deployment_id is required")
        rec = self.store.get_deployment(deployment_id)
        if rec is None:
            raise errors.NotFound(f"deployment '{deployment_id}' not found")
        return rec

    def get(self, deployment_id: str) -> deployments_pb2.Deployment:
        return views.deployment_view(self._get_record(deployment_id), reconciler=self.reconciler)

    def list(self) -> deployments_pb2.ListDeploymentsResponse:
        return deployments_pb2.ListDeploymentsResponse(
            deployments=[views.deployment_view(r, reconciler=self.reconciler) for r in self.store.list_deployments()]
        )

    def stats(self, deployment_id: str) -> deployments_pb2.GetDeploymentStatsResponse:
        return views.stats_view(self._get_record(deployment_id), reconciler=self.reconciler)

    async def watch(self, deployment_id: str) -> AsyncIterator[deployments_pb2.WatchDeploymentResponse]:
        seen = self.hub.version(deployment_id)
        last = None
        while True:
            deployment = self.get(deployment_id)
            if deployment != last:
                last = deployment
                yield deployments_pb2.WatchDeploymentResponse(deployment=deployment)
            seen = await self.hub.wait_change(deployment_id, seen)

    def model_in_use(self, model_id: str, version: int) -> bool:
        """True if a deployment that is not stopped runs (model_id, version); 0 = any version."""
        for rec in self.store.list_deployments():
            if rec.desired != RUNNING and rec.status == common_pb2.DEPLOYMENT_STATUS_STOPPED:
                continue
            for variant in rec.spec.variants:
                if variant.model_id == model_id and version in (0, variant.model_version):
                    return True
        return False


def _is_set(msg: deployments_pb2.StartDeploymentRequest, name: str) -> bool:
    value = getattr(msg, name)
    if name == "resources":
        return msg.HasField("resources")
    if name == "env":
        return bool(len(value))
    return bool(value)
