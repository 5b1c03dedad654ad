"""Deployment events: every routing-state transition, every status change and
every change of intent (start, update, stop, auto stop) and every autoscaling
decision, with time and reason.

This module owns the per-deployment event log. It is bounded: at most
`MAX_EVENTS_PER_DEPLOYMENT` events are kept, the oldest are dropped, and
`seq` (1, 2, ... per deployment) keeps growing so a reader that asks for the
events after the last seq it saw never misses or repeats one that is still
kept. The log lives in the store (one EventLogRecord per deployment) and an
event is written inside the caller's transaction, so it is durable together
with the change it describes. Recording notifies the change hub, which wakes
WatchDeployment streams.

Times come from the control plane's wall clock (the one auto stop uses), so
a test that moves that clock sees consistent times. Event-loop only.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import timestamp_pb2

from control_plane.reconcile.hub import ChangeHub
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import deployments_pb2

MAX_EVENTS_PER_DEPLOYMENT = 256

Event = deployments_pb2.DeploymentEvent


class EventLog:
    def __init__(self, *, store: Store, hub: ChangeHub, now: Callable[[], timestamp_pb2.Timestamp]) -> None:
        self.store = store
        self.hub = hub
        self._now = now

    def record(self, deployment_id: str, event: Event) -> Event:
        """Append event (seq and time are filled in) to the deployment's log."""
        log = self.store.get_event_log(deployment_id) or records_pb2.EventLogRecord(deployment_id=deployment_id)
        log.last_seq += 1
        event.seq = log.last_seq
        if not event.HasField("time"):
            event.time.CopyFrom(self._now())
        log.events.append(event)
        if len(log.events) > MAX_EVENTS_PER_DEPLOYMENT:
            del log.events[: len(log.events) - MAX_EVENTS_PER_DEPLOYMENT]
        self.store.put_event_log(log)
        self.hub.notify(deployment_id)
        return event

    def routing(
        self, alloc: records_pb2.AllocationRecord, *, old: int, new: int, reason: str
    ) -> Event:
        """One allocation's routing state changed from old to new."""
        return self.record(
            alloc.deployment_id,
            Event(
                kind=deployments_pb2.EVENT_KIND_ROUTING,
                node_id=alloc.node_id,
                variant=alloc.variant,
                allocation_id=alloc.allocation_id,
                from_routing_state=old,  # type: ignore[arg-type]
                routing_state=new,  # type: ignore[arg-type]
                reason=reason,
            ),
        )

    def status(self, deployment_id: str, *, old: int, new: int, reason: str) -> Event:
        """The deployment status changed from old to new."""
        return self.record(
            deployment_id,
            Event(kind=deployments_pb2.EVENT_KIND_STATUS, from_status=old, status=new, reason=reason),  # type: ignore[arg-type]
        )

    def spec(self, deployment_id: str, *, revision: int, reason: str) -> Event:
        """The deployment's intent changed (start, update, stop, auto stop)."""
        return self.record(deployment_id, Event(kind=deployments_pb2.EVENT_KIND_SPEC, revision=revision, reason=reason))

    def scale(self, deployment_id: str, *, variant: str, old: int, new: int, reason: str) -> Event:
        """An autoscaled variant's wanted allocations changed from old to new."""
        return self.record(
            deployment_id,
            Event(kind=deployments_pb2.EVENT_KIND_SCALE, variant=variant, from_allocations=old, allocations=new, reason=reason),
        )

    def since(self, deployment_id: str, after_seq: int = 0) -> list[Event]:
        """The kept events with seq > after_seq, oldest first."""
        log = self.store.get_event_log(deployment_id)
        if log is None:
            return []
        return [e for e in log.events if e.seq > after_seq]

    def last_seq(self, deployment_id: str) -> int:
        log = self.store.get_event_log(deployment_id)
        return log.last_seq if log else 0

    def forget(self, deployment_id: str) -> None:
        """The deployment was deleted: its events go with it."""
        self.store.delete_event_log(deployment_id)
