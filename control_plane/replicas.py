"""Several control-plane replicas on one PostgreSQL database: the process's
life as a standby, then maybe as the leader (control_plane.leader holds the
lease; control_plane.api.leadership gates the calls).

A replica starts as a standby: a full control plane on the uncached store
(every read goes to the database, so it answers List*/Get*/Watch* with what
the leader committed), with no reconcile or other loop, whose LeaderGate
refuses mutations, agent streams and the routes watch with UNAVAILABLE
naming the leader. Every `--lease-renew` seconds it campaigns; between
rounds it rereads the keys and wakes its watches. Once it wins the lease the
standby server stops and the leader's control plane (behind the write-through
cache, loaded from the database at that moment, the store fenced to the new
epoch) starts on the same HOST:PORT, exactly as after a restart: agents
reconnect within their backoff and report what runs, nothing is restarted.

A leader that loses the lease (another replica holds it, or it could not
renew for a whole lease) steps down by exiting with EXIT_DEPOSED after one
error line; its supervisor (systemd, Kubernetes) restarts it as a standby.
It never writes after the lease moved on: the store's fencing refuses the
commit (control_plane.store.postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from control_plane.leader import DEFAULT_LEASE_S, DEFAULT_RENEW_S, Leadership, LeaseStore, Role
from control_plane.store import Store
from control_plane.store.cached import CachedStore

log = logging.getLogger("control_plane")

EXIT_DEPOSED = 3


P = TypeVar("P", bound="Plane")
P_co = TypeVar("P_co", bound="Plane", covariant=True)


class Plane(Protocol):
    """What this module needs of control_plane.main.ControlPlane."""

    async def start(self, listen: str, *, lead: bool = True) -> str: ...
    async def stop(self, grace: float = 1.0, *, close_store: bool = True) -> None: ...
    def standby_round(self) -> None: ...
    def publish_endpoint(self, endpoint: str) -> None: ...


class Build(Protocol[P_co]):
    def __call__(self, store: Store, leadership: Leadership, *, leading: bool) -> P_co: ...




def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lease", type=float, default=DEFAULT_LEASE_S, metavar="S",
                   help="PostgreSQL store: the leader lease, in seconds (default %(default)s)")
    p.add_argument("--lease-renew", type=float, default=DEFAULT_RENEW_S, metavar="S",
                   help="PostgreSQL store: renew (or campaign for) the lease every S seconds (default %(default)s)")
    p.add_argument("--advertise-address", default="", metavar="HOST:PORT",
                   help="PostgreSQL store: the address other replicas and clients are sent to while this one "
                        "leads (default: the address bound)")  # fmt: skip


def takes_replicas(store: Store) -> bool:
    """Does this store hold a leader lease (PostgreSQL)?"""
    return callable(getattr(store, "campaign", None))


def leadership_from_flags(args: argparse.Namespace, *, store: Store, replica_id: str) -> Leadership:
    lease_store: LeaseStore = store  # type: ignore[assignment]  # takes_replicas said so
    try:
        return Leadership(store=lease_store, replica_id=replica_id, ttl_s=args.lease, renew_s=args.lease_renew)
    except ValueError as exc:
        raise SystemExit(f"error: --lease / --lease-renew: {exc}") from None


async def run(
    *,
    leadership: Leadership,
    listen: str,
    advertise: str,
    build: Build[P],
    lead: Callable[[P], Awaitable[Callable[[], Awaitable[None]]]],
    stopping: asyncio.Event,
) -> int:
    """Run this replica until `stopping` is set (0) or it is deposed (EXIT_DEPOSED)."""
    store: Store = leadership.store  # type: ignore[assignment]
    plane = build(store, leadership, leading=False)
    endpoint = await plane.start(listen, lead=False)
    leadership.address = advertise or endpoint
    stop_extras: Callable[[], Awaitable[None]] | None = None
    role = leadership.campaign()
    if role is Role.STANDBY:
        plane.publish_endpoint(endpoint)
    while not stopping.is_set() and role is not Role.DEPOSED:
        if role is Role.LEADER and stop_extras is None:
            await plane.stop(0.5, close_store=False)
            plane = build(CachedStore(store), leadership, leading=True)
            await plane.start(endpoint)
            stop_extras = await lead(plane)
        elif role is Role.STANDBY:
            try:
                plane.standby_round()
            except Exception:
                log.exception("standby round failed; continuing")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), leadership.renew_s)
        role = leadership.campaign()
    if role is Role.DEPOSED:
        log.error("control plane replica %s exits: it is no longer the leader (%s); restarted, it comes back "
                  "as a standby", leadership.replica_id, leadership.why_deposed)  # fmt: skip
    else:
        log.info("shutting down")
    if stop_extras is not None:
        await stop_extras()
    await plane.stop()
    return EXIT_DEPOSED if role is Role.DEPOSED else 0
