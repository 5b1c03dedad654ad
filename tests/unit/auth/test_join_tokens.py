"""Join tokens in KeyService: creation rules, use count, expiry, the node keys they issue."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import duration_pb2

from control_plane import errors
from control_plane.auth.keys import KeyService
from control_plane.store.memory import MemoryStore
from modelfleet.v1 import auth_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def service(clock: Clock | None = None) -> KeyService:
    return KeyService(store=MemoryStore(), clock=clock or Clock(), iterations=1)


def join_token(keys: KeyService, **fields: object) -> auth_pb2.CreateApiKeyResponse:
    return keys.create(auth_pb2.CreateApiKeyRequest(roles=["agent"], join=True, **fields), creator=None)  # type: ignore[arg-type]


def test_each_join_issues_a_key_bound_to_its_node_and_counts_a_use() -> None:
    keys = service()
    created = join_token(keys, max_uses=2)
    principal = asyncio.run(keys.authenticate(created.token))
    key_a, token_a = keys.join(principal, "node-a", "")
    key_b, _ = keys.join(principal, "node-b", "")
    node_a = asyncio.run(keys.authenticate(token_a))
    assert node_a.node_id == "node-a" and node_a.roles == ("agent",) and key_a != key_b
    view = keys.list(auth_pb2.ListApiKeysRequest(include_inactive=True))
    join = next(k for k in view.api_keys if k.key_id == created.api_key.key_id)
    assert (join.join, join.max_uses, join.uses, join.active) == (True, 2, 2, False)
    with pytest.raises(errors.PermissionDenied, match="used up: it registered 2 of at most 2"):
        keys.join(principal, "node-c", "")
    with pytest.raises(errors.PermissionDenied, match="cannot act for it|may act only"):
        keys.authorize_node(node_a, "node-b", key_b)


def test_a_join_token_never_takes_over_a_node_held_by_an_active_key() -> None:
    keys = service()
    principal = asyncio.run(keys.authenticate(join_token(keys).token))
    owner, _ = keys.join(principal, "node-a", "")
    with pytest.raises(errors.PermissionDenied, match="already belongs to the agent of API key"):
        keys.join(principal, "node-a", owner)
    keys.revoke(auth_pb2.RevokeApiKeyRequest(key_id=owner), caller=None)
    keys.join(principal, "node-a", owner)  # its key revoked: the node may join again


def test_revoking_or_expiring_the_join_token_leaves_the_node_keys() -> None:
    clock = Clock()
    keys = service(clock)
    created = join_token(keys, ttl=duration_pb2.Duration(seconds=60))
    principal = asyncio.run(keys.authenticate(created.token))
    _, node_token = keys.join(principal, "node-a", "")
    clock.now += 61
    with pytest.raises(errors.Unauthenticated, match="expired"):
        asyncio.run(keys.authenticate(created.token))
    keys.revoke(auth_pb2.RevokeApiKeyRequest(key_id=created.api_key.key_id), caller=None)
    assert asyncio.run(keys.authenticate(node_token)).node_id == "node-a"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"roles": ["agent", "viewer"], "join": True}, "grants only the agent privilege"),
        ({"roles": ["agent"], "join": True, "node_id": "node-a"}, "binds no node"),
        ({"roles": ["agent"], "join": True, "max_uses": -1}, "max_uses must be between 0"),
        ({"roles": ["agent"], "max_uses": 3}, "max_uses limits a join token"),
    ],
)
def test_bad_join_token_requests_name_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        service().create(auth_pb2.CreateApiKeyRequest(**fields), creator=None)  # type: ignore[arg-type]


def test_an_ordinary_agent_key_is_no_join_token() -> None:
    keys = service()
    created = keys.create(auth_pb2.CreateApiKeyRequest(roles=["agent"]), creator=None)
    assert not keys.is_join_token(created.api_key.key_id)
    with pytest.raises(errors.Unauthenticated):
        keys.join(asyncio.run(keys.authenticate(created.token)), "node-a", "")
