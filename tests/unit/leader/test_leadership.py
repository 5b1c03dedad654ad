"""Leadership's transitions driven round by round against a fake lease store
(the SQL itself is tested on a real PostgreSQL in tests/unit/store/
test_lease_postgres.py): a standby wins a free lease and fences the store to
its epoch; a leader whose lease shows another holder, or that cannot renew
for a whole lease, is deposed and fences every write; a store without a lease
leads from the start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.leader import Leadership, Role
from control_plane.store.lease import Lease, Replica

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FakeLeaseStore:
    def __init__(self) -> None:
        self.lease = Lease("", "", 0, NOW, NOW)
        self.fenced: list[int | None] = []
        self.down = False

    def campaign(self, *, holder: str, address: str, ttl_s: float) -> Lease:
        if self.down:
            raise ConnectionError("the database is down")
        if self.lease.holder in ("", holder):
            epoch = self.lease.epoch if self.lease.holder == holder else self.lease.epoch + 1
            self.lease = Lease(holder, address, epoch, NOW + timedelta(seconds=ttl_s), NOW)
        return self.lease

    def leader(self) -> Lease | None:
        return self.lease

    def replicas(self) -> list[Replica]:
        return []

    def forget_replicas(self, *, older_than_s: float) -> int:
        return 0

    def fence(self, epoch: int | None) -> None:
        self.fenced.append(epoch)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_standby_wins_a_free_lease_and_fences_the_store_to_its_epoch() -> None:
    store = FakeLeaseStore()
    me = Leadership(store=store, replica_id="a", ttl_s=5, renew_s=1)
    me.address = "A:1"
    assert me.role is Role.STANDBY and store.fenced == [None]
    assert me.campaign() is Role.LEADER
    assert (me.epoch, store.fenced[-1], me.leader_address()) == (1, 1, "A:1")
    assert me.campaign() is Role.LEADER and me.epoch == 1, "renewing keeps the epoch"


def test_a_standby_names_the_leader_in_its_refusal() -> None:
    store = FakeLeaseStore()
    store.lease = Lease("b", "B:1", 4, NOW + timedelta(seconds=5), NOW)
    me = Leadership(store=store, replica_id="a", ttl_s=5, renew_s=1)
    assert me.campaign() is Role.STANDBY
    refusal = me.refusal("StartDeployment")
    assert "not the leader; the leader is at B:1" in refusal.message
    assert refusal.trailers == {"modelfleet-leader": "B:1"}


def test_a_leader_whose_lease_moved_is_deposed_and_stays_so() -> None:
    store = FakeLeaseStore()
    me = Leadership(store=store, replica_id="a", ttl_s=5, renew_s=1)
    me.campaign()
    store.lease = Lease("b", "B:1", 2, NOW + timedelta(seconds=5), NOW)  # b took over while we were paused
    assert me.campaign() is Role.DEPOSED
    assert store.fenced[-1] is None and "epoch 2" in me.why_deposed
    store.lease = Lease("", "", 2, NOW, NOW)
    assert me.campaign() is Role.DEPOSED, "a deposed replica never campaigns again (it exits)"


def test_a_leader_that_cannot_renew_for_a_whole_lease_is_deposed() -> None:
    store, clock = FakeLeaseStore(), Clock()
    me = Leadership(store=store, replica_id="a", ttl_s=5, renew_s=1, clock=clock)
    me.campaign()
    store.down = True
    clock.now = 4.0
    assert me.campaign() is Role.LEADER, "a failed renewal within the lease keeps the role"
    clock.now = 5.0
    assert me.campaign() is Role.DEPOSED and store.fenced[-1] is None


def test_without_a_lease_store_the_one_control_plane_leads() -> None:
    me = Leadership(store=None, replica_id="solo")
    assert me.is_leader and me.campaign() is Role.LEADER and not me.replicated


def test_the_renewal_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError, match="shorter than the lease"):
        Leadership(store=FakeLeaseStore(), replica_id="a", ttl_s=1, renew_s=1)
