"""Leadership: which control-plane replica on one store leads.

On PostgreSQL several replicas share one database; the lease is the
database's `leader` row (control_plane.store.postgres). Each replica calls
`campaign()` every `renew_s` seconds: one UPDATE takes the lease if it is
free or expired, or renews ours, with the expiry `ttl_s` ahead on the
database's clock (never a replica's). The epoch grows on every change of
holder, and the store is fenced to the epoch we hold, so a leader that was
paused or cut off past its lease cannot commit a single row after another
took over.

Roles and what changes them (the only transitions; `campaign()` makes them):
- STANDBY -> LEADER: the UPDATE gave us the lease (a new epoch);
- LEADER -> DEPOSED: the lease shows another holder or epoch, or no renewal
  succeeded for a whole `ttl_s` (we can no longer tell). A deposed replica
  does not campaign again: the process exits, and its restart (systemd,
  Kubernetes) comes back as a standby with a new replica id.

With a store that has no lease (SQLite, memory: one control plane) the
replica is LEADER from the start, with epoch 0. Event-loop only.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from control_plane.errors import NotLeader
from control_plane.store.lease import Lease, Replica

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 5.0
DEFAULT_RENEW_S = 1.0
REPLICA_FORGET_S = 3600.0  # replicas not seen for this long drop out of `modelfleet status`


class Role(str, enum.Enum):
    STANDBY = "standby"
    LEADER = "leader"
    DEPOSED = "deposed"


_TRANSITIONS = {(Role.STANDBY, Role.LEADER), (Role.LEADER, Role.DEPOSED)}


class LeaseStore(Protocol):
    """What Leadership needs of the store (PostgresStore)."""

    def campaign(self, *, holder: str, address: str, ttl_s: float) -> Lease: ...
    def leader(self) -> Lease | None: ...
    def replicas(self) -> list[Replica]: ...
    def forget_replicas(self, *, older_than_s: float) -> int: ...
    def fence(self, epoch: int | None) -> None: ...


def new_replica_id() -> str:
    return uuid.uuid4().hex[:12]


class Leadership:
    """This replica's side of the lease; see the module docstring.

    Args:
        store: the lease's store; None for a store without one (always the leader).
        replica_id: this process's holder id (new per start).
        ttl_s: lease length; renew_s: how often `campaign()` is called.
    """

    def __init__(
        self,
        *,
        store: LeaseStore | None,
        replica_id: str,
        ttl_s: float = DEFAULT_LEASE_S,
        renew_s: float = DEFAULT_RENEW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if store is not None and not 0 < renew_s < ttl_s:
            raise ValueError(f"the lease renewal ({renew_s} s) must be positive and shorter than the lease ({ttl_s} s)")
        self.store = store
        self.replica_id = replica_id
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.address = ""
        self.role = Role.LEADER if store is None else Role.STANDBY
        self.epoch = 0
        self.lease: Lease | None = None  # as last read
        self._clock = clock
        self._renewed_at = clock()
        self.why_deposed = ""
        if store is not None:
            store.fence(None)  # a standby writes nothing

    @property
    def replicated(self) -> bool:
        return self.store is not None

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def leader_address(self) -> str:
        if self.is_leader:
            return self.address
        lease = self.lease
        return lease.address if lease is not None and lease.live else ""

    def refusal(self, what: str) -> NotLeader:
        """The error for `what` (a method) reaching this replica while it does not lead."""
        where = self.leader_address()
        said = f"the leader is at {where}" if where else "no leader holds the lease right now; retry shortly"
        return NotLeader(f"not the leader; {said} ({what} needs the leader; this is replica {self.replica_id}, "
                         f"a {self.role.value})", leader_address=where)  # fmt: skip

    def _become(self, role: Role) -> None:
        if (self.role, role) not in _TRANSITIONS:
            raise RuntimeError(f"leadership cannot go from {self.role.value} to {role.value}")
        self.role = role

    def campaign(self) -> Role:
        """One round: take or renew the lease. Returns the role after it.

        A database error counts as a failed renewal (logged); a leader that
        has not renewed for a whole lease is deposed."""
        store = self.store
        if store is None or self.role is Role.DEPOSED:
            return self.role
        try:
            lease = store.campaign(holder=self.replica_id, address=self.address, ttl_s=self.ttl_s)
        except Exception as exc:  # the database is unreachable or refused: we cannot tell who leads
            log.warning("lease campaign failed: %s", exc)
            if self.is_leader and self._clock() - self._renewed_at >= self.ttl_s:
                self._depose(f"the lease could not be renewed for {self.ttl_s:g} s ({exc})")
            return self.role
        self.lease = lease
        mine = lease.holder == self.replica_id
        if self.is_leader and (not mine or lease.epoch != self.epoch):
            self._depose(f"the lease moved to epoch {lease.epoch}, held by {lease.address or lease.holder}")
        elif self.is_leader:
            self._renewed_at = self._clock()
        elif mine:
            self.epoch = lease.epoch
            store.fence(lease.epoch)
            self._renewed_at = self._clock()
            self._become(Role.LEADER)
            log.info("replica %s (%s) is the leader now: epoch %d", self.replica_id, self.address, lease.epoch)
            try:
                store.forget_replicas(older_than_s=REPLICA_FORGET_S)
            except Exception:
                log.exception("forgetting old replicas failed; continuing")
        return self.role

    def _depose(self, why: str) -> None:
        assert self.store is not None
        self.store.fence(None)
        self.why_deposed = why
        self._become(Role.DEPOSED)
        log.error("replica %s lost the leadership (epoch %d): %s; stepping down", self.replica_id, self.epoch, why)

    def replicas(self) -> list[Replica]:
        """Every replica on the store (just this one without a lease store)."""
        return [] if self.store is None else self.store.replicas()

    def read_lease(self) -> Lease | None:
        """The lease as the database has it now (None without a lease store)."""
        if self.store is None:
            return None
        self.lease = self.store.leader()
        return self.lease
