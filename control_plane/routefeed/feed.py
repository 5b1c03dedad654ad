"""The routes feed: what standalone gateways (`modelfleet-gateway`) read,
published as numbered updates for `modelfleet.v1.Gateways/WatchRoutes`.

The feed keeps the last published form of every deployment (its record and
its started workers, as the control plane's own gateway sees them through
the `RouteSource`) and of the key verifiers. `refresh` compares the current
state with it and, when anything differs, publishes one update with the
next revision: the deployments that changed (whole), the ones removed, the
model versions they reference, and the verifiers when they changed. The
last `keep` updates are kept so that a gateway that reconnects with the
epoch and revision it last applied gets only what it missed; anything else
(another epoch, i.e. a restarted control plane, or too far back) gets a
fresh snapshot. A revision beyond the current one is refused. Every update
carries the number of open watch streams (gateway processes), and one is
published when it changes: each gateway enforces that share of every
deployment's traffic limit, so the limit holds for the deployment as a whole.

`run` refreshes after every change the hub sees and at least every
`interval` seconds (route tables are rebuilt after reconcile ticks, which do
not always notify), but only while a gateway watches: a refresh reads every
deployment, and with no watcher the next one's first refresh publishes
everything that changed meanwhile as one update. `refresh` may also be
called directly (key changes).
Event-loop only.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable

from control_plane import errors
from control_plane.reconcile.hub import ANY, ChangeHub
from control_plane.routes import RouteSource
from modelfleet.v1 import agent_pb2, gateways_pb2, models_pb2

DEFAULT_KEEP = 1000
DEFAULT_INTERVAL_S = 0.25


class RoutesFeed:
    """Numbered updates of the gateway's view (see the module docstring)."""

    def __init__(
        self,
        *,
        source: RouteSource,
        hub: ChangeHub,
        credentials: Callable[[], agent_pb2.InferenceCredentials] | None = None,
        keep: int = DEFAULT_KEEP,
        interval: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._source = source
        self._hub = hub
        self._credentials = credentials
        self._interval = interval
        self.epoch = time.time_ns()
        self.revision = 0
        self._published: dict[str, bytes] = {}  # deployment_id -> serialized DeploymentRoutes
        self._creds = b""  # serialized verifiers (without their version)
        self._log: collections.deque[gateways_pb2.RoutesUpdate] = collections.deque(maxlen=keep)
        self._changed = asyncio.Event()
        self.watchers = 0  # open WatchRoutes streams: gateway processes, among which traffic limits are shared
        self.watching: collections.Counter[str] = collections.Counter()  # gateway_id -> open streams
        self._gateways = 0  # the count last published

    # ---- publishing --------------------------------------------------------------
    def _current(self) -> dict[str, gateways_pb2.DeploymentRoutes]:
        out: dict[str, gateways_pb2.DeploymentRoutes] = {}
        for rec in self._source.deployments():
            entry = gateways_pb2.DeploymentRoutes(record=rec)
            for r in self._source.routes(rec.deployment_id):
                entry.routes.add(
                    allocation_id=r.allocation_id, node_id=r.node_id, variant=r.variant, address=r.address,
                    token=r.token, model_id=r.model[0], model_version=r.model[1],
                )  # fmt: skip
            out[rec.deployment_id] = entry
        return out

    def _current_credentials(self) -> agent_pb2.InferenceCredentials | None:
        if self._credentials is None:
            return None
        creds = self._credentials()
        creds.version = 0  # compared by content; the version is stamped per update
        return creds

    def _models(self, entries: list[gateways_pb2.DeploymentRoutes]) -> list[models_pb2.Model]:
        wanted = {(v.model_id, v.model_version) for e in entries for v in e.record.spec.variants}
        wanted |= {(r.model_id, r.model_version) for e in entries for r in e.routes}
        found = (self._source.model(model_id, version) for model_id, version in sorted(wanted) if model_id)
        return [m for m in found if m is not None]

    def refresh(self) -> bool:
        """Publish one update if anything changed since the last one. Returns whether it did."""
        current = self._current()
        serialized = {k: v.SerializeToString(deterministic=True) for k, v in current.items()}
        changed = [current[k] for k, data in serialized.items() if self._published.get(k) != data]
        removed = sorted(set(self._published) - set(serialized))
        creds = self._current_credentials()
        creds_data = creds.SerializeToString(deterministic=True) if creds is not None else b""
        if not changed and not removed and creds_data == self._creds and self.watchers == self._gateways:
            return False
        self.revision += 1
        update = gateways_pb2.RoutesUpdate(
            epoch=self.epoch, revision=self.revision, deployments=changed, removed_deployments=removed,
            models=self._models(changed), gateways=self.watchers,
        )  # fmt: skip
        self._gateways = self.watchers
        if creds is not None and creds_data != self._creds:
            update.has_credentials = True
            update.credentials.CopyFrom(creds)
            update.credentials.version = self.revision
        self._published, self._creds = serialized, creds_data
        self._log.append(update)
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    def snapshot(self) -> gateways_pb2.RoutesUpdate:
        """Everything at the current revision, as one update that replaces what a gateway holds."""
        entries = [gateways_pb2.DeploymentRoutes.FromString(data) for _, data in sorted(self._published.items())]
        out = gateways_pb2.RoutesUpdate(
            epoch=self.epoch, revision=self.revision, snapshot=True, deployments=entries, models=self._models(entries),
            gateways=self._gateways,
        )  # fmt: skip
        if self._credentials is not None:
            out.has_credentials = True
            out.credentials.ParseFromString(self._creds)
            out.credentials.version = self.revision
        return out

    async def run(self) -> None:
        """Refresh after every change and every `interval` seconds, until cancelled."""
        seen = self._hub.version(ANY)
        while True:
            if self.watchers:
                self.refresh()
            seen = await self._hub.wait_change(ANY, seen, timeout=self._interval)

    # ---- watching ----------------------------------------------------------------
    def _after(self, revision: int) -> list[gateways_pb2.RoutesUpdate] | None:
        """The updates after `revision`, or None when they are no longer all kept."""
        if revision == self.revision:
            return []
        if revision > self.revision or not self._log or self._log[0].revision > revision + 1:
            return None
        return [u for u in self._log if u.revision > revision]

    async def watch(self, request: gateways_pb2.WatchRoutesRequest) -> AsyncIterator[gateways_pb2.RoutesUpdate]:
        """A snapshot or the missed updates, then every update (see the module docstring)."""
        if request.revision < 0:
            raise errors.InvalidArgument(f"revision must be >= 0, got {request.revision}")
        if request.epoch == self.epoch and request.revision > self.revision:
            raise errors.InvalidArgument(
                f"revision {request.revision} is beyond this control plane's current revision {self.revision} "
                f"(epoch {self.epoch}): send the revision of the last update applied"
            )
        sent = request.revision if request.epoch == self.epoch else -1
        self.watchers += 1
        self.watching[request.gateway_id] += 1
        try:
            self.refresh()  # publishes the new gateway count (the others' shares shrink)
            async for update in self._follow(sent):
                yield update
        finally:
            self.watchers -= 1
            self.watching[request.gateway_id] -= 1
            if self.watching[request.gateway_id] <= 0:
                del self.watching[request.gateway_id]
            self.refresh()

    async def _follow(self, sent: int) -> AsyncIterator[gateways_pb2.RoutesUpdate]:
        while True:
            pending = self._after(sent) if sent >= 0 else None
            if pending is None:
                snapshot = self.snapshot()
                yield snapshot
                sent = snapshot.revision  # updates may have been published while it was being sent
                continue
            for update in pending:
                yield update
                sent = update.revision
            if sent == self.revision:
                await self._changed.wait()
