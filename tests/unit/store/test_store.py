"""Contract tests for every Store implementation (STYLE practice 6), and
open_store.

StoreContract holds every test of the Store ABC's documented constraints; it
is subclassed once per backend, and each subclass only provides the
`make_store` fixture: a factory that opens the backend (for SQLite, the same
file every call, so a second call is a reopen). SQLite-only tests (durability
across reopen, schema versions, the pragmas, crash consistency under
SIGKILL) live on TestSqliteStore in tests/unit/store/test_store_sqlite.py. The records
the tests write come from tests/storerecords.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from storerecords import KINDS, StoreFactory, allocation, api_key, deployment, event_log, model, node, request

from control_plane.store import MemoryStore, SqliteStore, Store, open_store
from control_plane.store.cached import CachedStore
from modelfleet.v1 import models_pb2


# ---- helpers -------------------------------------------------------------------------
def _every_read(store: Store) -> list[object]:
    """What the record reads return now (the cached kinds, with their indexes)."""
    return [
        store.list_models(),
        store.get_model("m"),
        store.max_model_version("m"),
        store.list_deployments(),
        store.list_allocations(),
        *(store.list_allocations(deployment_id=d) for d in ("d1", "d2")),
        *(store.list_allocations(node_id=n) for n in ("n1", "n2", "n3")),
        store.list_nodes(),
    ]


def _in_thread(call: Callable[[], object]) -> list[BaseException]:
    """Run `call` on a new thread; the exception it raised, if any."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return errors


# ---- the contract -----------------------------------------------------------------
class StoreContract:
    """Every Store must pass these. Subclasses provide the `make_store` fixture."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        raise NotImplementedError("a backend's test class provides make_store")

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> Iterator[Store]:
        s = make_store()
        yield s
        s.close()

    # -- models ----------------------------------------------------------------
    def test_model_put_get_exact_version(self, store: Store) -> None:
        store.put_model(model("m", 1))
        store.put_model(model("m", 2))
        assert store.get_model("m", 1) == model("m", 1)
        assert store.get_model("m", 2) == model("m", 2)

    def test_model_version_zero_is_newest(self, store: Store) -> None:
        for v in (2, 7, 3):
            store.put_model(model("m", v))
        store.put_model(model("other", 9))
        newest = store.get_model("m", 0)
        assert newest is not None and newest.version == 7
        assert store.get_model("m") == newest

    def test_model_missing(self, store: Store) -> None:
        assert store.get_model("nope") is None
        assert store.get_model("nope", 1) is None
        store.put_model(model("m", 1))
        assert store.get_model("m", 2) is None

    def test_model_replace(self, store: Store) -> None:
        store.put_model(model("m", 1, description="old"))
        store.put_model(model("m", 1, description="new"))
        assert [m.description for m in store.list_models("m")] == ["new"]

    def test_list_models_orders_by_id_then_version(self, store: Store) -> None:
        for mid, v in [("b", 2), ("a", 10), ("b", 1), ("a", 2), ("c", 1)]:
            store.put_model(model(mid, v))
        assert [(m.model_id, m.version) for m in store.list_models()] == [
            ("a", 2),
            ("a", 10),
            ("b", 1),
            ("b", 2),
            ("c", 1),
        ]
        assert [(m.model_id, m.version) for m in store.list_models("b")] == [("b", 1), ("b", 2)]
        assert store.list_models("zzz") == []

    def test_delete_model(self, store: Store) -> None:
        store.put_model(model("m", 1))
        store.put_model(model("m", 2))
        assert store.delete_model("m", 2) is True
        assert store.delete_model("m", 2) is False
        assert store.get_model("m", 2) is None
        newest = store.get_model("m")
        assert newest is not None and newest.version == 1

    def test_max_model_version_survives_delete(self, store: Store) -> None:
        assert store.max_model_version("m") == 0
        store.put_model(model("m", 1))
        store.put_model(model("m", 5))
        store.put_model(model("m", 3))
        assert store.max_model_version("m") == 5
        for v in (1, 3, 5):
            assert store.delete_model("m", v)
        assert store.list_models("m") == []
        assert store.get_model("m") is None
        assert store.max_model_version("m") == 5
        assert store.max_model_version("other") == 0

    @pytest.mark.parametrize("bad", [model("", 1), model("m", 0), model("m", -1)])
    def test_model_key_is_required(self, store: Store, bad: models_pb2.Model) -> None:
        with pytest.raises(ValueError):
            store.put_model(bad)
        assert store.list_models() == []

    # -- deployments -------------------------------------------------------------
    def test_deployment_crud(self, store: Store) -> None:
        assert store.get_deployment("d1") is None
        store.put_deployment(deployment("d1", revision=1))
        assert store.get_deployment("d1") == deployment("d1", revision=1)
        store.put_deployment(deployment("d1", revision=2))
        got = store.get_deployment("d1")
        assert got is not None and got.revision == 2
        assert store.delete_deployment("d1") is True
        assert store.delete_deployment("d1") is False
        assert store.get_deployment("d1") is None

    def test_list_deployments_by_id(self, store: Store) -> None:
        for did in ["d3", "d1", "d10", "d2"]:
            store.put_deployment(deployment(did))
        assert [d.deployment_id for d in store.list_deployments()] == ["d1", "d10", "d2", "d3"]

    # -- allocations -------------------------------------------------------------
    def test_allocation_crud(self, store: Store) -> None:
        assert store.get_allocation("a1") is None
        store.put_allocation(allocation("a1"))
        assert store.get_allocation("a1") == allocation("a1")
        moved = allocation("a1", node_id="n9")
        store.put_allocation(moved)
        assert store.get_allocation("a1") == moved
        assert [a.allocation_id for a in store.list_allocations(node_id="n9")] == ["a1"]
        assert store.list_allocations(node_id="n1") == []
        assert store.delete_allocation("a1") is True
        assert store.delete_allocation("a1") is False
        assert store.get_allocation("a1") is None

    def test_list_allocations_filters_and_order(self, store: Store) -> None:
        rows = [("a4", "d1", "n2"), ("a2", "d2", "n1"), ("a1", "d1", "n1"), ("a3", "d2", "n2"), ("a5", "d1", "n1")]
        for aid, did, nid in rows:
            store.put_allocation(allocation(aid, deployment_id=did, node_id=nid))

        def ids(**kw: str) -> list[str]:
            return [a.allocation_id for a in store.list_allocations(**kw)]

        assert ids() == ["a1", "a2", "a3", "a4", "a5"]
        assert ids(deployment_id="d1") == ["a1", "a4", "a5"]
        assert ids(node_id="n1") == ["a1", "a2", "a5"]
        assert ids(deployment_id="d1", node_id="n1") == ["a1", "a5"]
        assert ids(deployment_id="d2", node_id="n2") == ["a3"]
        assert ids(deployment_id="nope") == []

    # -- nodes -------------------------------------------------------------------
    def test_node_crud_keyed_by_info_node_id(self, store: Store) -> None:
        assert store.get_node("n1") is None
        store.put_node(node("n1", cpus=4))
        assert store.get_node("n1") == node("n1", cpus=4)
        store.put_node(node("n1", cpus=16))
        got = store.get_node("n1")
        assert got is not None and got.info.capacity.cpus == 16
        assert len(store.list_nodes()) == 1

    def test_list_nodes_by_id(self, store: Store) -> None:
        for nid in ["node-c", "node-a", "node-b"]:
            store.put_node(node(nid))
        assert [n.info.node_id for n in store.list_nodes()] == ["node-a", "node-b", "node-c"]

    # -- requests ----------------------------------------------------------------
    def test_request_put_get_replace(self, store: Store) -> None:
        assert store.get_request("r1") is None
        store.put_request(request("r1", response=b"\x00\x01first"))
        assert store.get_request("r1") == request("r1", response=b"\x00\x01first")
        store.put_request(request("r1", response=b"second"))
        got = store.get_request("r1")
        assert got is not None and got.response == b"second"

    # -- event logs ----------------------------------------------------------------
    def test_event_log_put_get_replace_delete(self, store: Store) -> None:
        assert store.get_event_log("d1") is None
        store.put_event_log(event_log("d1", events=1))
        store.put_event_log(event_log("d2", events=3))
        assert store.get_event_log("d1") == event_log("d1", events=1)
        store.put_event_log(event_log("d1", events=4))
        got = store.get_event_log("d1")
        assert got is not None and [e.seq for e in got.events] == [1, 2, 3, 4] and got.last_seq == 4
        assert store.delete_event_log("d1") is True
        assert store.delete_event_log("d1") is False
        assert store.get_event_log("d1") is None
        assert store.get_event_log("d2") == event_log("d2", events=3)

    # -- API keys ----------------------------------------------------------------
    def test_api_keys_put_get_replace_list(self, store: Store) -> None:
        assert store.get_api_key("k1") is None
        for key_id in ["k2", "k1"]:
            store.put_api_key(api_key(key_id))
        revoked = api_key("k1")
        revoked.revoked_at.FromSeconds(1)
        store.put_api_key(revoked)
        assert store.get_api_key("k1") == revoked
        assert [k.key_id for k in store.list_api_keys()] == ["k1", "k2"]

    @pytest.mark.parametrize("kind", list(KINDS))
    def test_empty_key_is_refused(self, store: Store, kind: str) -> None:
        make, put, _, list_all = KINDS[kind]
        with pytest.raises(ValueError):
            put(store, type(make())())  # every key field empty
        assert list_all is None or list_all(store) == []

    # -- copies ------------------------------------------------------------------
    @pytest.mark.parametrize("kind", list(KINDS))
    def test_returned_messages_are_copies(self, store: Store, kind: str) -> None:
        make, put, get, list_all = KINDS[kind]
        put(store, make())
        got = get(store)
        assert got == make()
        got.Clear()
        if list_all is not None:
            list_all(store)[0].Clear()
        assert get(store) == make()

    @pytest.mark.parametrize("kind", list(KINDS))
    def test_stored_messages_do_not_alias_the_input(self, store: Store, kind: str) -> None:
        make, put, get, _ = KINDS[kind]
        record = make()
        put(store, record)
        record.Clear()
        assert get(store) == make()

    # -- transactions --------------------------------------------------------------
    def test_transaction_commits_together(self, store: Store) -> None:
        with store.transaction():
            store.put_deployment(deployment("d1"))
            store.put_allocation(allocation("a1"))
            # reads inside the transaction see its own writes
            assert store.get_deployment("d1") == deployment("d1")
        assert store.get_deployment("d1") == deployment("d1")
        assert store.get_allocation("a1") == allocation("a1")

    def test_transaction_rolls_back_on_exception(self, store: Store) -> None:
        store.put_deployment(deployment("keep", revision=1))
        store.put_allocation(allocation("gone-later"))
        store.put_model(model("m", 1))
        with pytest.raises(RuntimeError, match="boom"), store.transaction():
            store.put_deployment(deployment("keep", revision=2))
            store.put_deployment(deployment("new"))
            store.delete_allocation("gone-later")
            store.put_model(model("m", 9))
            store.put_node(node("n1"))
            store.put_request(request("r1"))
            raise RuntimeError("boom")
        assert [d.revision for d in store.list_deployments()] == [1]
        assert store.get_allocation("gone-later") == allocation("gone-later")
        assert store.max_model_version("m") == 1
        newest = store.get_model("m")
        assert newest is not None and newest.version == 1
        assert store.list_nodes() == [] and store.get_request("r1") is None
        # the store is usable afterwards
        store.put_node(node("n2"))
        assert [n.info.node_id for n in store.list_nodes()] == ["n2"]

    def test_transaction_rolls_back_on_base_exception(self, store: Store) -> None:
        with pytest.raises(asyncio.CancelledError), store.transaction():
            store.put_deployment(deployment("d1"))
            raise asyncio.CancelledError()
        assert store.get_deployment("d1") is None

    def test_nested_transaction_commits_with_outer(self, store: Store) -> None:
        with store.transaction():
            store.put_deployment(deployment("d1"))
            with store.transaction():
                store.put_allocation(allocation("a1"))
            assert store.get_allocation("a1") is not None
            store.put_node(node("n1"))
        assert store.get_deployment("d1") is not None
        assert store.get_allocation("a1") is not None
        assert store.get_node("n1") is not None

    def test_nested_transaction_joins_outer_rollback(self, store: Store) -> None:
        with pytest.raises(RuntimeError), store.transaction():
            with store.transaction():
                store.put_allocation(allocation("a1"))
            # the inner block exited cleanly, but nothing is committed yet
            store.put_deployment(deployment("d1"))
            raise RuntimeError("outer fails")
        assert store.get_allocation("a1") is None
        assert store.get_deployment("d1") is None

    def test_exception_from_nested_block_rolls_back_everything(self, store: Store) -> None:
        with pytest.raises(KeyError), store.transaction():
            store.put_deployment(deployment("d1"))
            with store.transaction():
                store.put_allocation(allocation("a1"))
                raise KeyError("inner fails")
        assert store.get_deployment("d1") is None
        assert store.get_allocation("a1") is None

    def test_nested_failure_caught_by_outer_is_joined_not_undone(self, store: Store) -> None:
        # Joining (no savepoints): only the outermost block decides, so the
        # inner block's writes commit if the outer block swallows its error.
        with store.transaction():
            store.put_deployment(deployment("d1"))
            try:
                with store.transaction():
                    store.put_allocation(allocation("a1"))
                    raise KeyError("inner fails")
            except KeyError:
                pass
        assert store.get_deployment("d1") is not None
        assert store.get_allocation("a1") is not None

    def test_sequential_transactions_are_independent(self, store: Store) -> None:
        with store.transaction():
            store.put_deployment(deployment("d1"))
        with pytest.raises(RuntimeError), store.transaction():
            store.delete_deployment("d1")
            raise RuntimeError
        with store.transaction():
            store.put_deployment(deployment("d2"))
        assert [d.deployment_id for d in store.list_deployments()] == ["d1", "d2"]

    def test_nesting_depth_only_the_outermost_commits(self, store: Store) -> None:
        with store.transaction():
            store.put_deployment(deployment("d1"))
            with store.transaction():
                store.put_allocation(allocation("a1", deployment_id="d1"))
                with store.transaction():
                    store.put_node(node("n1"))
                # every level sees the writes of every level before it
                assert store.get_node("n1") == node("n1")
            assert store.get_deployment("d1") == deployment("d1")
            assert store.get_allocation("a1") == allocation("a1", deployment_id="d1")
        assert [d.deployment_id for d in store.list_deployments()] == ["d1"]
        assert [a.allocation_id for a in store.list_allocations(deployment_id="d1")] == ["a1"]
        assert [n.info.node_id for n in store.list_nodes()] == ["n1"]

    def test_exception_from_a_deep_block_aborts_the_outermost(self, store: Store) -> None:
        store.put_deployment(deployment("d0", revision=1))
        with pytest.raises(ValueError), store.transaction():
            store.put_deployment(deployment("d0", revision=2))
            with store.transaction():
                store.put_allocation(allocation("a1"))
                with store.transaction():
                    store.put_node(node("n1"))
                    raise ValueError("deepest fails")
        assert [d.revision for d in store.list_deployments()] == [1]
        assert store.list_allocations() == [] and store.list_nodes() == []
        # the depth is back to zero: the next write commits on its own
        store.put_node(node("n2"))
        with store.transaction():
            pass
        assert [n.info.node_id for n in store.list_nodes()] == ["n2"]

    def test_reads_inside_a_transaction_see_its_writes(self, store: Store) -> None:
        store.put_model(model("m", 1))
        store.put_allocation(allocation("a1", deployment_id="d1", node_id="n1"))
        store.put_allocation(allocation("a2", deployment_id="d1", node_id="n2"))
        with store.transaction():
            store.put_model(model("m", 2))
            store.put_allocation(allocation("a2", deployment_id="d2", node_id="n1"))  # moved
            store.delete_allocation("a1")
            store.put_event_log(event_log("d1"))
            store.put_api_key(api_key("k1"))
            newest = store.get_model("m")
            assert newest is not None and newest.version == 2 and store.max_model_version("m") == 2
            assert [m.version for m in store.list_models("m")] == [1, 2]
            assert store.get_allocation("a1") is None
            assert store.list_allocations(deployment_id="d1") == []
            assert [a.allocation_id for a in store.list_allocations(node_id="n1")] == ["a2"]
            assert [a.allocation_id for a in store.list_allocations(deployment_id="d2", node_id="n1")] == ["a2"]
            assert store.get_event_log("d1") == event_log("d1")
            assert [k.key_id for k in store.list_api_keys()] == ["k1"]

    def test_abort_restores_every_read(self, store: Store) -> None:
        # What every read returns after an aborted transaction equals what it
        # returned before it (for CachedStore: the cache is rolled back too).
        store.put_model(model("m", 1))
        store.put_deployment(deployment("d1"))
        store.put_allocation(allocation("a1", deployment_id="d1", node_id="n1"))
        store.put_allocation(allocation("a2", deployment_id="d1", node_id="n2"))
        store.put_node(node("n1"))
        before = _every_read(store)
        with pytest.raises(RuntimeError), store.transaction():
            store.put_model(model("m", 2))
            store.delete_model("m", 1)
            store.put_deployment(deployment("d1", revision=5))
            store.delete_deployment("d1")
            store.put_allocation(allocation("a2", deployment_id="d2", node_id="n3"))
            store.put_allocation(allocation("a3", deployment_id="d1", node_id="n1"))
            store.delete_allocation("a1")
            store.put_node(node("n1", cpus=2.0))
            store.put_node(node("n9"))
            assert _every_read(store) != before
            raise RuntimeError("abort")
        assert _every_read(store) == before

    def test_commit_refused_by_the_backend_aborts(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        # A backend may refuse in its commit hook (a PostgreSQL store whose
        # fencing epoch moved on): the base aborts and the error propagates.
        store.put_deployment(deployment("d1", revision=1))

        def refuse() -> None:
            raise RuntimeError("fenced")

        monkeypatch.setattr(store, "_commit", refuse)
        with pytest.raises(RuntimeError, match="fenced"), store.transaction():
            store.put_deployment(deployment("d1", revision=2))
            store.put_node(node("n1"))
        monkeypatch.undo()
        assert [d.revision for d in store.list_deployments()] == [1]
        assert store.list_nodes() == []
        store.put_node(node("n2"))  # usable afterwards
        assert [n.info.node_id for n in store.list_nodes()] == ["n2"]

    # -- thread model ----------------------------------------------------------------
    def test_writes_from_another_thread_are_refused(self, store: Store) -> None:
        store.put_node(node("n1"))
        with store.transaction():
            store.put_deployment(deployment("d1"))
            errors = _in_thread(lambda: store.put_node(node("n2")))
            errors += _in_thread(lambda: store.transaction().__enter__())
        assert [type(e) for e in errors] == [RuntimeError, RuntimeError]
        # nothing the other thread tried was written, and the owner's transaction committed whole
        assert [n.info.node_id for n in store.list_nodes()] == ["n1"]
        assert store.get_deployment("d1") == deployment("d1")
        store.put_node(node("n3"))
        assert [n.info.node_id for n in store.list_nodes()] == ["n1", "n3"]

    # -- lifecycle -----------------------------------------------------------------
    def test_close_is_idempotent_and_final(self, make_store: StoreFactory) -> None:
        s = make_store()
        s.put_node(node("n1"))
        s.close()
        s.close()
        with pytest.raises(RuntimeError):
            s.get_node("n1")
        with pytest.raises(RuntimeError):
            s.put_node(node("n2"))


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return MemoryStore


class TestCachedMemoryStore(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return lambda: CachedStore(MemoryStore())


class TestCachedSqliteStore(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return lambda: CachedStore(SqliteStore(tmp_path / "state" / "modelfleet.db"))

    def test_cache_loads_what_the_file_holds_and_stays_equal_to_it(self, make_store: StoreFactory) -> None:
        s = make_store()
        s.put_model(model("m", 1))
        s.put_deployment(deployment("d1"))
        s.put_allocation(allocation("a1", deployment_id="d1", node_id="n1"))
        s.put_allocation(allocation("a2", deployment_id="d1", node_id="n2"))
        s.put_node(node("n1"))
        with pytest.raises(RuntimeError), s.transaction():
            s.put_allocation(allocation("a2", deployment_id="d2", node_id="n3"))  # moved, then rolled back
            s.delete_allocation("a1")
            s.delete_deployment("d1")
            raise RuntimeError
        assert [a.allocation_id for a in s.list_allocations(deployment_id="d1")] == ["a1", "a2"]
        assert s.list_allocations(node_id="n3") == [] and s.list_allocations(deployment_id="d2") == []
        s.close()
        s = make_store()  # a fresh cache, loaded from the file
        try:
            assert [a.allocation_id for a in s.list_allocations(node_id="n2")] == ["a2"]
            assert s.get_deployment("d1") == deployment("d1") and s.get_model("m") == model("m", 1)
        finally:
            s.close()


@pytest.mark.parametrize("inner", ["memory", "sqlite"])
def test_cache_rolls_back_when_the_inner_store_refuses_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inner: str
) -> None:
    backend: Store = MemoryStore() if inner == "memory" else SqliteStore(tmp_path / "modelfleet.db")
    s = CachedStore(backend)
    try:
        s.put_allocation(allocation("a1", deployment_id="d1", node_id="n1"))

        def refuse() -> None:
            raise RuntimeError("fenced")

        monkeypatch.setattr(backend, "_commit", refuse)
        with pytest.raises(RuntimeError, match="fenced"), s.transaction():
            s.put_allocation(allocation("a1", deployment_id="d2", node_id="n2"))
            s.put_deployment(deployment("d2"))
        monkeypatch.undo()
        assert [a.allocation_id for a in s.list_allocations(deployment_id="d1", node_id="n1")] == ["a1"]
        assert s.list_allocations(node_id="n2") == [] and s.get_deployment("d2") is None
        assert backend.list_allocations() == s.list_allocations() and backend.list_deployments() == []
    finally:
        s.close()


# ---- open_store ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("sub/x.db", "sub/x.db"),  # sqlite:// + an absolute path: sqlite:///abs/sub/x.db
        ("", "modelfleet.db"),  # an existing directory
        ("data/cp", "data/cp/modelfleet.db"),  # a new directory is created
        ("state.sqlite3", "state.sqlite3"),  # a database file
    ],
    ids=["sqlite-url", "existing-dir", "new-dir", "db-file"],
)
def test_open_store_sqlite(tmp_path: Path, location: str, expected: str) -> None:
    arg = f"sqlite://{tmp_path / location}" if location.endswith(".db") else str(tmp_path / location)
    s = open_store(arg)
    try:
        assert isinstance(s, SqliteStore) and s.path == tmp_path / expected
        assert s.path.exists()
    finally:
        s.close()


def test_open_store_memory() -> None:
    s = open_store("memory://")
    assert isinstance(s, MemoryStore)
    s.close()


@pytest.mark.parametrize("bad", ["", "redis://db/x", "sqlite://"])
def test_open_store_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        open_store(bad)
