"""The leader lease and fencing of the PostgreSQL store, on a real server
(tests/pg.py): two stores on one database stand for two control-plane
replicas. The lease is taken and renewed by one UPDATE against the
database's clock; the epoch grows only when the holder changes; a fenced
store commits nothing unless it holds the current epoch, and a refused
commit leaves no row behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg import PgServer, fresh_database  # postgres_server: tests/conftest.py registers pg
from storerecords import deployment

from control_plane.store.cached import CachedStore
from control_plane.store.postgres import Fenced, PostgresStore


@pytest.fixture
def pair(postgres_server: PgServer) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    url = fresh_database(postgres_server)
    a, b = PostgresStore(url), PostgresStore(url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_one_holder_at_a_time_and_the_epoch_grows_on_a_change(pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = pair
    first = a.campaign(holder="a", address="A:1", ttl_s=30)
    assert (first.holder, first.address, first.live) == ("a", "A:1", True)
    assert b.campaign(holder="b", address="B:1", ttl_s=30).holder == "a", "a live lease is not taken"
    renewed = a.campaign(holder="a", address="A:1", ttl_s=30)
    assert renewed.epoch == first.epoch and renewed.expires_at >= first.expires_at, "renewing keeps the epoch"
    a.campaign(holder="a", address="A:1", ttl_s=0)  # let it expire at once (database clock)
    taken = b.campaign(holder="b", address="B:1", ttl_s=30)
    assert (taken.holder, taken.epoch) == ("b", first.epoch + 1)
    assert {r.holder for r in a.replicas()} == {"a", "b"}


def test_a_deposed_leader_commits_nothing(pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = pair
    old = a.campaign(holder="a", address="A:1", ttl_s=0)
    a.fence(old.epoch)
    a.put_deployment(deployment("written-while-leader"))
    new = b.campaign(holder="b", address="B:1", ttl_s=30)
    b.fence(new.epoch)
    with pytest.raises(Fenced, match=f"epoch {old.epoch}.*epoch {new.epoch} held by B:1") as refused:
        a.put_deployment(deployment("stale"))
    assert refused.value.leader is not None and refused.value.leader.address == "B:1"
    b.put_deployment(deployment("by-the-new-leader"))
    assert [d.deployment_id for d in b.list_deployments()] == ["by-the-new-leader", "written-while-leader"]


def test_a_refused_commit_rolls_back_the_whole_transaction_and_the_cache(pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = pair
    cached = CachedStore(a)
    a.fence(None)  # a standby
    with pytest.raises(Fenced, match="no epoch"):
        with cached.transaction():
            cached.put_deployment(deployment("d1"))
            cached.put_deployment(deployment("d2"))
    assert cached.list_deployments() == [] and b.list_deployments() == []


def test_unfenced_stores_write_freely(pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, _ = pair
    a.put_deployment(deployment("d1"))  # one control plane without a lease (the contract suite) is not fenced
    assert a.get_deployment("d1") == deployment("d1")
