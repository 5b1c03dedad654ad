"""Deployment API logic (transport-free): start (and restart), stop, update,
delete, get, list, stats, events and watch, with the Elasticsearch start
semantics and the ModelArts service rules (quota, auto stop, gated launch).

Start validates and normalizes the request (control_plane.deployments.specs), checks
the owner's quota and refuses what can never be placed (RESOURCE_EXHAUSTED
naming the shortfall), writes the intent to the store together with a SPEC
event (durable before anything is sent), runs a reconcile tick and then
waits on the change hub until `wait_for` holds or `timeout` passes
(DEADLINE_EXCEEDED; the deployment keeps starting). A request that names
only a deployment_id restarts that stopped deployment with its stored spec.

Update merges the update mask into the stored spec (control_plane.deployments.specs)
and records the new revision; the reconciler carries it out
make-before-break (control_plane.planning.rollout). `dry_run` on start and update
returns the plan (control_plane.deployments.preview) and changes nothing.

Quota: at most `max_deployments_per_user` deployments (stopped ones
included: they keep their name and can be restarted) per owner, the
caller's identity.

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
from collections.abc import AsyncIterator, Callable, Sequence

from control_plane import errors, ids, paging
from control_plane.auth.access import current_principal
from control_plane.deployments import preview, scaling, views
from control_plane.deployments.specs import DEFAULT_TIMEOUT_S, SpecRules, check_code_loading_env, seconds
from control_plane.models.registry import ModelRegistry
from control_plane.planning import scheduler
from control_plane.reconcile.hub import ChangeHub
from control_plane.reconcile.reconciler import Reconciler, now_ts
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, deployments_pb2

RUNNING = records_pb2.DESIRED_STATE_RUNNING
STOPPED = records_pb2.DESIRED_STATE_STOPPED
DEFAULT_MAX_DEPLOYMENTS_PER_USER = 20

_WAIT_NAMES: dict[int, str] = {
    deployments_pb2.WAIT_FOR_STARTING: "starting",
    deployments_pb2.WAIT_FOR_STARTED: "started",
    deployments_pb2.WAIT_FOR_FULLY_ALLOCATED: "fully_allocated",
}
_ALLOC_NAMES = {v: k.removeprefix("ALLOCATION_STATE_").lower() for k, v in common_pb2.AllocationState.items()}
# fields a restart request may carry besides deployment_id
_RESTART_FIELDS = frozenset({"deployment_id", "timeout", "wait_for", "request_id", "dry_run"})


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
        max_deployments_per_user: int = DEFAULT_MAX_DEPLOYMENTS_PER_USER,
        gateway_stats: Callable[[str], Sequence[deployments_pb2.GatewayCounters]] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.store = reconciler.store
        self.events = reconciler.events
        self.hub = hub
        self.registry = registry
        self.rules = SpecRules(resolve=registry.resolve_deployable, default_auto_stop_s=default_auto_stop_s)
        self.max_deployments_per_user = max_deployments_per_user
        self.gateway_stats = gateway_stats

    # ---- validation ----------------------------------------------------------------
    def normalize(self, req: deployments_pb2.StartDeploymentRequest) -> deployments_pb2.StartDeploymentRequest:
        """The request with defaults applied and model versions resolved (see control_plane.deployments.specs)."""
        return self.rules.normalize(req)

    def _check_capacity(self, spec: deployments_pb2.StartDeploymentRequest) -> None:
        nodes = list(self.reconciler.node_views().values())
        sizes: list[int] = []
        for variant in spec.variants:
            model = self.reconciler.model_for(variant)
            sizes.append(model.model_bytes if model else 0)
            demand = scheduler.demand_for(variant, model_bytes=sizes[-1])
            placement = scheduler.place(demand, nodes, current=())
            if placement.shortfall:
                label = f" (variant {variant.name!r})" if len(spec.variants) > 1 else ""
                raise errors.ResourceExhausted(f"could not start deployment '{spec.deployment_id}'{label}: {placement.shortfall}")
        scaling.check_fleet(spec, nodes=nodes, model_bytes=sizes)

    def _check_quota(self, owner: str, deployment_id: str) -> None:
        limit = self.max_deployments_per_user
        if limit <= 0:
            return
        owned = [r.deployment_id for r in self.store.list_deployments() if r.owner == owner and r.deployment_id != deployment_id]
        if len(owned) >= limit:
            raise errors.ResourceExhausted(
                f"deployment quota exceeded: user '{owner}' already has {len(owned)} deployments and the quota is "
                f"{limit} per user (--max-deployments-per-user); delete a deployment first"
            )

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
    def _start_spec(
        self, req: deployments_pb2.StartDeploymentRequest, *, owner: str
    ) -> tuple[deployments_pb2.StartDeploymentRequest, records_pb2.DeploymentRecord | None, str, str]:
        """(spec, existing record, owner, what happened) for a start or a restart."""
        given = {f.name for f, _ in req.ListFields()}
        if req.deployment_id and not req.model_id and not req.variants:
            existing = self.store.get_deployment(req.deployment_id)
            if existing is None:
                raise errors.NotFound(f"deployment '{req.deployment_id}' not found; give model_id or variants to start a new one")
            extra = sorted(given - _RESTART_FIELDS)
            if extra:
                raise errors.InvalidArgument(
                    f"{', '.join(extra)} given without model_id or variants: to restart a stopped deployment give only "
                    "deployment_id; to change it use UpdateDeployment"
                )
            self._refuse_running(existing)
            spec = deployments_pb2.StartDeploymentRequest()
            spec.CopyFrom(existing.spec)
            spec.wait_for = req.wait_for or deployments_pb2.WAIT_FOR_STARTED
            spec.timeout.FromNanoseconds(int((seconds(req.timeout) if req.HasField("timeout") else DEFAULT_TIMEOUT_S) * 1e9))
            return spec, existing, existing.owner or owner, "restarted"
        spec = self.rules.normalize(req)
        if not _caller_is_admin():
            check_code_loading_env(spec)
        existing = self.store.get_deployment(spec.deployment_id)
        if existing is not None:
            self._refuse_running(existing)
        self._check_quota(owner, spec.deployment_id)
        return spec, existing, owner, "started"

    def _refuse_running(self, existing: records_pb2.DeploymentRecord) -> None:
        if existing.desired == RUNNING:
            status = common_pb2.DeploymentStatus.Name(existing.status).removeprefix("DEPLOYMENT_STATUS_")
            raise errors.AlreadyExists(
                f"deployment '{existing.deployment_id}' is already started (status {status}); stop it first or choose another deployment_id"
            )

    async def start(self, req: deployments_pb2.StartDeploymentRequest, *, owner: str) -> deployments_pb2.StartDeploymentResponse:
        digest = _digest(req, method="StartDeployment")
        replay = None if req.dry_run else self._replay(req.request_id, digest)
        if replay is not None:
            deployment_id = replay.response.decode()
            replayed = self._get_record(deployment_id)
            if replayed.desired != RUNNING:  # stopped since: the same deployment, as it is now
                deployment = self.get(deployment_id)
                return deployments_pb2.StartDeploymentResponse(allocation=deployment.allocations[0], deployment=deployment)
            spec = replayed.spec
        else:
            spec, existing, owner, what = self._start_spec(req, owner=owner)
            deployment_id = spec.deployment_id
            self._check_capacity(spec)
            now = self.reconciler.now()
            record = records_pb2.DeploymentRecord(
                deployment_id=deployment_id,
                spec=spec,
                desired=RUNNING,
                owner=owner,
                start_time=now,
                revision=(existing.revision + 1) if existing else 1,
                # the derivation records the change from here (UNSPECIFIED or STOPPED) to DEPLOYING
                status=existing.status if existing else common_pb2.DEPLOYMENT_STATUS_UNSPECIFIED,
            )
            record.created_at.CopyFrom(existing.created_at if existing else now)
            if req.dry_run:  # a restart plans against the allocations the stopped deployment still has
                current = self.store.list_allocations(deployment_id=deployment_id) if existing else ()
                deployment = preview.preview(record, reconciler=self.reconciler, current=current)
                return deployments_pb2.StartDeploymentResponse(allocation=deployment.allocations[0], deployment=deployment, dry_run=True)
            with self.store.transaction():
                self.store.put_deployment(record)
                self._remember(req.request_id, digest, "StartDeployment", deployment_id.encode())
                self.events.spec(deployment_id, revision=record.revision, reason=f"{what} by '{owner}': {_describe(spec)}")
            self.hub.notify(deployment_id)
            self.reconciler.reconcile([deployment_id])  # scoped: nothing else changed
        await self._wait(deployment_id, spec.wait_for, seconds(spec.timeout))
        deployment = self.get(deployment_id)
        return deployments_pb2.StartDeploymentResponse(allocation=deployment.allocations[0], deployment=deployment)

    def _reached(self, deployment_id: str, wait_for: int, *, settled: bool) -> tuple[bool, deployments_pb2.Deployment]:
        deployment = self.get(deployment_id)
        states = [a.allocation_state for a in deployment.allocations]
        if wait_for == deployments_pb2.WAIT_FOR_STARTING:
            return True, deployment
        if settled and (deployment.rollout or len(deployment.retiring)):
            return False, deployment
        if wait_for == deployments_pb2.WAIT_FOR_FULLY_ALLOCATED:
            return all(s == common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED for s in states), deployment
        ok = (common_pb2.ALLOCATION_STATE_STARTED, common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED)
        return all(s in ok for s in states), deployment

    async def _wait(self, deployment_id: str, wait_for: int, timeout: float, *, settled: bool = False) -> None:
        """Until every variant reached wait_for (and, if settled, no rolling update is left)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = self.hub.version(deployment_id)
        while True:
            reached, deployment = self._reached(deployment_id, wait_for, settled=settled)
            if reached:
                return
            if deployment.status == common_pb2.DEPLOYMENT_STATUS_FAILED:
                raise errors.FailedPrecondition(f"deployment '{deployment_id}' failed: {deployment.status_reason}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                reached_names = ", ".join(_ALLOC_NAMES[a.allocation_state] for a in deployment.allocations)
                why = f" ({deployment.status_reason})" if deployment.status_reason else ""
                pending = f"; rolling update: {deployment.rollout}" if settled and deployment.rollout else ""
                raise errors.DeadlineExceeded(
                    f"timed out after {timeout:g}s waiting for deployment '{deployment_id}' to be "
                    f"{_WAIT_NAMES[wait_for]}; allocation state is {reached_names}{why}{pending}; "
                    f"the deployment keeps {'updating' if settled else 'starting'}"
                )
            seen = await self._next_change(deployment_id, seen, remaining)

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
                self.events.spec(rec.deployment_id, revision=rec.revision, reason="stopped by user")
            self.hub.notify(rec.deployment_id)
            self.reconciler.reconcile([rec.deployment_id])  # scoped: nothing else changed
        if req.wait:
            timeout = seconds(req.timeout) if req.HasField("timeout") else DEFAULT_TIMEOUT_S
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
            seen = await self._next_change(deployment_id, seen, remaining)

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
            self.events.forget(rec.deployment_id)
        self.reconciler.forget(rec.deployment_id)
        self.hub.notify(rec.deployment_id)
        return deployments_pb2.DeleteDeploymentResponse(deployment=view)

    async def update(self, req: deployments_pb2.UpdateDeploymentRequest) -> deployments_pb2.UpdateDeploymentResponse:
        digest = _digest(req, method="UpdateDeployment")
        rec = self._get_record(req.deployment_id)
        if req.dry_run or self._replay(req.request_id, digest) is None:
            spec = self.rules.merge_update(rec.spec, req)
            if not _caller_is_admin():
                check_code_loading_env(spec, before=rec.spec)
            self._check_capacity(spec)
            new = records_pb2.DeploymentRecord()
            new.CopyFrom(rec)
            new.spec.CopyFrom(spec)
            new.revision += 1
            if req.dry_run:
                current = self.store.list_allocations(deployment_id=rec.deployment_id)
                deployment = preview.preview(new, reconciler=self.reconciler, current=current)
                return deployments_pb2.UpdateDeploymentResponse(deployment=deployment, dry_run=True)
            with self.store.transaction():
                if spec != rec.spec:  # an identical spec changes nothing
                    self.store.put_deployment(new)
                    paths = ", ".join(dict.fromkeys(req.update_mask.paths))
                    self.events.spec(rec.deployment_id, revision=new.revision, reason=f"updated {paths}: {_describe(spec)}")
                self._remember(req.request_id, digest, "UpdateDeployment", rec.deployment_id.encode())
            self.hub.notify(rec.deployment_id)
            self.reconciler.reconcile([rec.deployment_id])  # scoped: nothing else changed
        if req.wait_for != deployments_pb2.WAIT_FOR_UNSPECIFIED:
            timeout = seconds(req.timeout) if req.HasField("timeout") else DEFAULT_TIMEOUT_S
            await self._wait(rec.deployment_id, req.wait_for, timeout, settled=True)
        return deployments_pb2.UpdateDeploymentResponse(deployment=self.get(rec.deployment_id))

    # ---- reads ------------------------------------------------------------------------
    def _get_record(self, deployment_id: str) -> records_pb2.DeploymentRecord:
        return ids.lookup("deployment", deployment_id, self.store.get_deployment)

    def get(self, deployment_id: str, *, shape: views.Shape = views.FULL_SHAPE) -> deployments_pb2.Deployment:
        return views.deployment_view(self._get_record(deployment_id), reads=self.reconciler.reads, shape=shape)

    def read(self, req: deployments_pb2.GetDeploymentRequest) -> deployments_pb2.Deployment:
        view = _checked_view(req.view, default=views.FULL)
        if req.per_node_reasons and view != views.FULL:
            raise errors.InvalidArgument("per_node_reasons needs view VIEW_FULL (the BASIC view has no placement reasons)")
        return self.get(req.deployment_id, shape=views.Shape(view=view, per_node_reasons=req.per_node_reasons))

    def list(self, req: deployments_pb2.ListDeploymentsRequest) -> deployments_pb2.ListDeploymentsResponse:
        """One page of the deployments that pass the filters, ordered by id, BASIC by default."""
        view = _checked_view(req.view, default=views.BASIC)
        if req.status and req.status not in common_pb2.DeploymentStatus.values():
            raise errors.InvalidArgument(f"status {req.status} is not a DeploymentStatus")
        query = paging.query_fingerprint("deployments", view, req.owner, req.status, req.model_id)
        page = paging.paginate(
            (rec for rec in self.store.list_deployments() if _passes(rec, req)),
            key=lambda rec: (rec.deployment_id,), page=req.page, query=query,
        )  # fmt: skip
        # views are built for this page only, one at a time into the response
        out = deployments_pb2.ListDeploymentsResponse(next_page_token=page.next_page_token)
        for rec in page.items:
            out.deployments.append(views.deployment_view(rec, reads=self.reconciler.reads, shape=views.Shape(view=view)))
        return out

    def stats(self, deployment_id: str) -> deployments_pb2.GetDeploymentStatsResponse:
        return views.stats_view(self._get_record(deployment_id), reads=self.reconciler.reads, gateway_stats=self.gateway_stats)

    def list_events(self, req: deployments_pb2.ListDeploymentEventsRequest) -> deployments_pb2.ListDeploymentEventsResponse:
        rec = self._get_record(req.deployment_id)
        if req.after_seq < 0:
            raise errors.InvalidArgument(f"after_seq must be >= 0, got {req.after_seq}")
        query = paging.query_fingerprint("events", rec.deployment_id, req.after_seq)
        page = paging.paginate(
            self.events.since(rec.deployment_id, req.after_seq), key=lambda e: (e.seq,), page=req.page, query=query
        )
        return deployments_pb2.ListDeploymentEventsResponse(events=page.items, next_page_token=page.next_page_token)

    async def watch(self, deployment_id: str, *, after_seq: int = 0) -> AsyncIterator[deployments_pb2.WatchDeploymentResponse]:
        """A snapshot at once, then one per change, each with the events since the previous one.

        after_seq > 0 resumes: the first message carries the events after it
        (resumed = True when the log still held every one of them).
        """
        seen = self.hub.version(deployment_id)
        self._get_record(deployment_id)
        newest = self.events.last_seq(deployment_id)
        if not 0 <= after_seq <= newest:
            raise errors.InvalidArgument(
                f"after_seq {after_seq} is not an event of deployment '{deployment_id}' (0 to its newest, {newest})"
            )
        resumed = after_seq > 0 and _log_holds_after(self.events.since(deployment_id), after_seq, newest)
        last_seq = after_seq if after_seq else newest
        last = None
        while True:
            deployment = self.get(deployment_id)
            fresh = self.events.since(deployment_id, last_seq)
            if deployment != last or fresh:
                first = last is None
                last = deployment
                if fresh:
                    last_seq = fresh[-1].seq
                yield deployments_pb2.WatchDeploymentResponse(deployment=deployment, events=fresh, resumed=first and resumed)
            seen = await self._next_change(deployment_id, seen)

    async def _next_change(self, deployment_id: str, seen: int, timeout: float | None = None) -> int:
        """The hub's next version of deployment_id; UNAVAILABLE once the control plane shuts down."""
        version = await self.hub.wait_change(deployment_id, seen, timeout)
        if self.hub.closed:
            raise errors.Unavailable("the control plane is shutting down; retry once it is back")
        return version

    def model_in_use(self, model_id: str, version: int) -> bool:
        """True if a deployment that is not stopped runs (model_id, version); 0 = any version."""
        for rec in self.store.list_deployments():
            if rec.desired != RUNNING and rec.status == common_pb2.DEPLOYMENT_STATUS_STOPPED:
                continue
            for variant in rec.spec.variants:
                if variant.model_id == model_id and version in (0, variant.model_version):
                    return True
            for alloc in self.store.list_allocations(deployment_id=rec.deployment_id):
                if alloc.spec.model_id == model_id and version in (0, alloc.spec.model_version):
                    return True  # an old allocation of an update still runs it
        return False


def _checked_view(view: int, *, default: int) -> int:
    if view not in common_pb2.View.values():
        raise errors.InvalidArgument(f"view {view} is not a View: use VIEW_BASIC or VIEW_FULL")
    return view or default


def _passes(rec: records_pb2.DeploymentRecord, req: deployments_pb2.ListDeploymentsRequest) -> bool:
    """Whether the deployment passes the list's filters (owner, status, model)."""
    if req.owner and rec.owner != req.owner:
        return False
    if req.status and rec.status != req.status:
        return False
    return not req.model_id or any(v.model_id == req.model_id for v in rec.spec.variants)


def _log_holds_after(held: list[deployments_pb2.DeploymentEvent], after_seq: int, newest: int) -> bool:
    """Whether the kept events still include every one after after_seq."""
    oldest = held[0].seq if held else newest + 1
    return oldest <= after_seq + 1


def _caller_is_admin() -> bool:
    """Whether this call's API key has the admin role (with auth off every caller may do anything)."""
    principal = current_principal()
    return principal is None or "admin" in principal.roles


def _describe(spec: deployments_pb2.StartDeploymentRequest) -> str:
    """A short summary of a spec for events: variants with weights and instances (never env values)."""
    parts = []
    for v in spec.variants:
        text = f"{v.name} ({v.model_id} v{v.model_version}) {v.weight}%"
        text += f", {v.instances} instance(s)" if v.instances else ", every eligible node"
        text += f", threads {v.inference_threads}x{v.model_threads}, queue {v.queue_capacity}"
        parts.append(text)
    extra = []
    if spec.traffic_limit_qps:
        extra.append(f"traffic limit {spec.traffic_limit_qps:g}/s")
    if spec.HasField("auto_stop"):
        extra.append(f"auto stop {spec.auto_stop.seconds // 3600}h")
    return "; ".join(parts + extra)
