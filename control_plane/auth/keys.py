"""API keys: creation, verification, revocation, the bootstrap admin key and
the verifiers handed to inference workers.

A token is `mfk_<key_id>_<secret>`: 16 hex digits naming the record and 32
random bytes (URL-safe base64) that only the holder knows. The store keeps
PBKDF2-HMAC-SHA256(secret, 16-byte salt, HASH_ITERATIONS) and never the
secret. The secret has 256 bits of entropy, so the slow hash is defence in
depth rather than what stands between a stolen database and the keys; to
keep calls cheap a verified token is remembered by its SHA-256 (never the
token itself) for the life of the process, and revocation and expiry are
checked on every call against the in-memory records.

Rules:
- A key's privileges are its roles' plus any extra privileges. A key can
  never create a key with a privilege it lacks, nor one that outlives it,
  and can revoke only keys whose privileges it holds itself (so a
  manage_security key without admin cannot revoke the admin key).
- Agent keys act for one node: bound at creation (`node_id`) or on the first
  registration (`authorize_node`). A node registered by an active agent key
  cannot be taken over by another agent key; revoke the old key first.
  `node_id = "*"` makes a key for any node (one key shared by a Kubernetes
  DaemonSet): weaker, since each holder can then act for every node.
- Join tokens (`join`, role agent only, optional ttl and `max_uses`): any
  number of hosts may register with one; each registration (`join`) uses
  it once and issues that node its own agent key bound to it, which the
  agent keeps and uses from then on. Revoking or expiring the join token
  stops new joins only; revoking a node's key evicts that node. A join
  token never takes over a node held by another active agent key.
- On first start with no key at all, `bootstrap` creates an admin key, writes
  it to DATA_DIR/admin.key (mode 0600) and returns it to be printed once.

Event-loop only (the store is synchronous); the PBKDF2 of a token not seen
before runs in a worker thread. `on_change(revoked_key_id)` is called after
every create and revoke so agents get new verifiers (and streams of a
revoked key are closed).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from google.protobuf import timestamp_pb2

from control_plane import errors, paging
from control_plane.auth import access
from control_plane.ids import check_id
from control_plane.store import Store
from modelfleet import keycheck
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, auth_pb2

log = logging.getLogger(__name__)

TOKEN_PREFIX = "mfk_"
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
HASH_ITERATIONS = 20_000
MAX_NAME_CHARS = 200
MAX_KEYS = 10_000
MAX_TTL_S = 100 * 365 * 24 * 3600
_CACHE_LIMIT = 10_000
ADMIN_KEY_FILE = "admin.key"
ANY_NODE = "*"
MAX_JOIN_USES = 1_000_000


def hash_secret(secret: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def write_secret_file(path: Path, text: str) -> None:
    """Write text to path atomically with mode 0600 (created so; never wider)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class KeyService:
    """The API keys of one control plane (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str], None] | None = None,
        iterations: int = HASH_ITERATIONS,
    ) -> None:
        self.store = store
        self._clock = clock
        self.on_change = on_change
        self._iterations = iterations
        self._records: dict[str, records_pb2.ApiKeyRecord] = {r.key_id: r for r in store.list_api_keys()}
        self._verified: collections.OrderedDict[bytes, str] = collections.OrderedDict()

    def reload(self) -> None:
        """Read every key again (a standby replica: the leader creates and revokes them)."""
        self._records = {r.key_id: r for r in self.store.list_api_keys()}

    # ---- state of a record --------------------------------------------------------
    def _expired(self, record: records_pb2.ApiKeyRecord) -> bool:
        return record.HasField("expires_at") and self._clock() >= _seconds(record.expires_at)

    def active(self, key_id: str) -> bool:
        record = self._records.get(key_id)
        return record is not None and not record.HasField("revoked_at") and not self._expired(record) and not _used_up(record)

    def is_join_token(self, key_id: str) -> bool:
        record = self._records.get(key_id)
        return record is not None and record.join

    def principal_of(self, record: records_pb2.ApiKeyRecord) -> access.Principal:
        return access.Principal(
            user=record.user,
            key_id=record.key_id,
            roles=tuple(record.roles),
            privileges=access.privileges_of(record.roles, record.privileges),
            node_id=record.node_id,
            expires_at=_seconds(record.expires_at) if record.HasField("expires_at") else None,
            join=record.join,
        )

    def view(self, record: records_pb2.ApiKeyRecord) -> auth_pb2.ApiKey:
        out = auth_pb2.ApiKey(
            key_id=record.key_id,
            user=record.user,
            roles=record.roles,
            privileges=sorted(access.privileges_of(record.roles, record.privileges)),
            name=record.name,
            created_by=record.created_by,
            node_id=record.node_id,
            active=self.active(record.key_id),
            join=record.join,
            max_uses=record.max_uses,
            uses=record.uses,
        )
        for name in ("created_at", "expires_at", "revoked_at"):
            if record.HasField(name):
                getattr(out, name).CopyFrom(getattr(record, name))
        return out

    # ---- verification ------------------------------------------------------------
    async def authenticate(self, token: str) -> access.Principal:
        """The principal of a bearer token.

        Raises:
            Unauthenticated: malformed, unknown, wrong secret, revoked or expired.
        """
        match = keycheck.TOKEN.match(token)
        if match is None:
            raise errors.Unauthenticated("malformed API key: expected mfk_<key id>_<secret>")
        key_id, secret = match.groups()
        record = self._records.get(key_id)
        if record is None:
            raise errors.Unauthenticated("invalid API key")
        digest = hashlib.sha256(token.encode()).digest()
        if self._verified.get(digest) != key_id:
            expected = record.secret_hash
            got = await asyncio.to_thread(hash_secret, secret, record.salt, record.hash_iterations)
            if not hmac.compare_digest(got, expected):
                raise errors.Unauthenticated("invalid API key")
            self._verified[digest] = key_id
            if len(self._verified) > _CACHE_LIMIT:
                self._verified.popitem(last=False)
        record = self._records.get(key_id)  # it may have changed while hashing
        if record is None:
            raise errors.Unauthenticated("invalid API key")
        if record.HasField("revoked_at"):
            raise errors.Unauthenticated(f"API key {key_id} was revoked at {_when(_seconds(record.revoked_at))}")
        if self._expired(record):
            raise errors.Unauthenticated(f"API key {key_id} expired at {_when(_seconds(record.expires_at))}")
        return self.principal_of(record)

    # ---- the API -------------------------------------------------------------------
    def _new_record(
        self,
        *,
        user: str,
        roles: list[str],
        privileges: list[str],
        name: str,
        expires_at: float | None,
        created_by: str,
        node_id: str,
    ) -> tuple[records_pb2.ApiKeyRecord, str]:
        key_id = secrets.token_hex(8)
        while key_id in self._records:
            key_id = secrets.token_hex(8)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        salt = secrets.token_bytes(16)
        record = records_pb2.ApiKeyRecord(
            key_id=key_id,
            user=user,
            roles=roles,
            privileges=privileges,
            name=name,
            salt=salt,
            secret_hash=hash_secret(secret, salt, self._iterations),
            hash_iterations=self._iterations,
            created_at=_ts(self._clock()),
            created_by=created_by,
            node_id=node_id,
        )
        if expires_at is not None:
            record.expires_at.CopyFrom(_ts(expires_at))
        return record, f"{TOKEN_PREFIX}{key_id}_{secret}"

    def _save(self, record: records_pb2.ApiKeyRecord, *, revoked: str = "") -> None:
        self.store.put_api_key(record)
        copy = records_pb2.ApiKeyRecord()
        copy.CopyFrom(record)
        self._records[record.key_id] = copy
        if self.on_change is not None:
            self.on_change(revoked)

    def _checked_expiry(self, req: auth_pb2.CreateApiKeyRequest) -> float | None:
        """When the new key expires (None: never), from the request's ttl."""
        if not req.HasField("ttl"):
            return None
        ttl = req.ttl.seconds + req.ttl.nanos / 1e9
        if not 0 <= ttl <= MAX_TTL_S or req.ttl.nanos < 0 or req.ttl.nanos >= 1_000_000_000:
            raise errors.InvalidArgument(f"ttl must be between 0 (never expires) and {MAX_TTL_S} s, got {ttl:g} s")
        return self._clock() + ttl if ttl > 0 else None

    def create(self, req: auth_pb2.CreateApiKeyRequest, *, creator: access.Principal | None) -> auth_pb2.CreateApiKeyResponse:
        """A new key. creator None = authentication is off (no subset rule applies).

        Raises:
            InvalidArgument: unknown role or privilege, none given, bad user, name, ttl or node_id.
            PermissionDenied: a privilege the creator lacks, or a key outliving the creator's.
            ResourceExhausted: MAX_KEYS keys exist.
        """
        roles, extra, wanted = _checked_grants(req)
        user = req.user or (creator.user if creator is not None else access.DEFAULT_USER)
        node_id = _checked_holder(req, user=user, wanted=wanted)
        _check_join(req, wanted=wanted, node_id=node_id)
        expires_at = self._checked_expiry(req)
        if creator is not None:
            _check_creator_may_grant(creator, wanted=wanted, expires_at=expires_at)
        if len(self._records) >= MAX_KEYS:
            raise errors.ResourceExhausted(f"there are {len(self._records)} API keys; at most {MAX_KEYS} are kept")
        record, token = self._new_record(
            user=user,
            roles=roles,
            privileges=extra,
            name=req.name,
            expires_at=expires_at,
            created_by=creator.key_id if creator is not None else "",
            node_id=node_id,
        )
        record.join, record.max_uses = req.join, req.max_uses
        self._save(record)
        log.info("API key %s created for user %s (roles %s, privileges %s)", record.key_id, user, roles, extra)
        return auth_pb2.CreateApiKeyResponse(api_key=self.view(record), token=token)

    def list(self, req: auth_pb2.ListApiKeysRequest) -> auth_pb2.ListApiKeysResponse:
        """One page of the keys (of req.user; active ones unless include_inactive), by key id."""
        chosen = (
            r for r in self._records.values()
            if (not req.user or r.user == req.user) and (req.include_inactive or self.active(r.key_id))
        )  # fmt: skip
        query = paging.query_fingerprint("keys", req.user, req.include_inactive)
        page = paging.paginate(chosen, key=lambda r: (r.key_id,), page=req.page, query=query)
        return auth_pb2.ListApiKeysResponse(api_keys=[self.view(r) for r in page.items], next_page_token=page.next_page_token)

    def revoke(self, req: auth_pb2.RevokeApiKeyRequest, *, caller: access.Principal | None) -> auth_pb2.RevokeApiKeyResponse:
        """Revoke a key (idempotent).

        Raises:
            InvalidArgument: no key_id. NotFound: unknown key.
            PermissionDenied: the key holds privileges the caller lacks.
        """
        if not req.key_id:
            raise errors.InvalidArgument("key_id is required")
        record = self._records.get(req.key_id)
        if record is None:
            raise errors.NotFound(f"API key {req.key_id!r} not found")
        if caller is not None:
            missing = access.privileges_of(record.roles, record.privileges) - caller.privileges
            if missing:
                raise errors.PermissionDenied(
                    f"{caller.describe()} cannot revoke API key {record.key_id}: it holds privileges the caller "
                    f"lacks ({', '.join(sorted(missing))})"
                )
        if not record.HasField("revoked_at"):
            updated = records_pb2.ApiKeyRecord()
            updated.CopyFrom(record)
            updated.revoked_at.CopyFrom(_ts(self._clock()))
            self._save(updated, revoked=updated.key_id)
            record = updated
            log.info("API key %s (user %s) revoked", record.key_id, record.user)
        return auth_pb2.RevokeApiKeyResponse(api_key=self.view(record))

    def whoami(self, principal: access.Principal | None, *, user: str) -> auth_pb2.WhoAmIResponse:
        if principal is None:
            return auth_pb2.WhoAmIResponse(user=user, privileges=sorted(access.PRIVILEGES), authentication_enabled=False)
        record = self._records.get(principal.key_id)
        return auth_pb2.WhoAmIResponse(
            user=principal.user,
            api_key=self.view(record) if record is not None else None,
            privileges=sorted(principal.privileges),
            authentication_enabled=True,
        )

    # ---- agents -------------------------------------------------------------------------
    def authorize_node(self, principal: access.Principal | None, node_id: str, registered_by: str) -> None:
        """May principal act for node_id (registered last by key `registered_by`)? Binds an unbound agent key.

        Raises:
            PermissionDenied: the key is bound to another node, or the node belongs to another active agent key.
        """
        if principal is None:
            return
        record = self._records.get(principal.key_id)
        if record is None:
            raise errors.Unauthenticated("invalid API key")
        if record.node_id not in ("", ANY_NODE, node_id):
            raise errors.PermissionDenied(
                f"{principal.describe()} may act only for node {record.node_id}, not for node {node_id}"
            )
        trusted = access.MANAGE_SECURITY in principal.privileges
        if registered_by and registered_by != principal.key_id and self.active(registered_by) and not trusted:
            raise errors.PermissionDenied(
                f"node {node_id} belongs to the agent of API key {registered_by}; {principal.describe()} cannot act "
                "for it (revoke that key to move the node to a new one)"
            )
        if not record.node_id and not trusted:
            bound = records_pb2.ApiKeyRecord()
            bound.CopyFrom(record)
            bound.node_id = node_id
            self.store.put_api_key(bound)
            self._records[bound.key_id] = bound
            log.info("API key %s is now bound to node %s", bound.key_id, node_id)

    def join(self, principal: access.Principal, node_id: str, registered_by: str) -> tuple[str, str]:
        """Register node_id with a join token: use it once, return (key_id, token) of the node's own new key.

        Raises:
            PermissionDenied: the token is used up, or the node is held by another active agent key.
            ResourceExhausted: MAX_KEYS keys exist.
        """
        record = self._records.get(principal.key_id)
        if record is None or not record.join:
            raise errors.Unauthenticated("invalid API key")
        if _used_up(record):
            raise errors.PermissionDenied(
                f"join token {record.key_id} is used up: it registered {record.uses} of at most {record.max_uses} nodes"
            )
        if registered_by and self.active(registered_by):
            raise errors.PermissionDenied(
                f"node {node_id} already belongs to the agent of API key {registered_by}; a join token cannot take "
                "it over (use that node's key, or revoke it to rejoin)"
            )
        if len(self._records) >= MAX_KEYS:
            raise errors.ResourceExhausted(f"there are {len(self._records)} API keys; at most {MAX_KEYS} are kept")
        used = records_pb2.ApiKeyRecord()
        used.CopyFrom(record)
        used.uses += 1
        node_key, token = self._new_record(
            user=record.user, roles=["agent"], privileges=[], name=f"node {node_id} (joined with {record.key_id})",
            expires_at=None, created_by=record.key_id, node_id=node_id,
        )  # fmt: skip
        self.store.put_api_key(used)
        self._records[used.key_id] = used
        self._save(node_key)
        log.info("node %s joined with join token %s (use %d); its API key is %s", node_id, record.key_id, used.uses, node_key.key_id)
        return node_key.key_id, token

    def credentials(self) -> agent_pb2.InferenceCredentials:
        """Verifiers of every active key with the infer privilege (what workers accept)."""
        out = agent_pb2.InferenceCredentials(version=time.time_ns())
        for key_id in sorted(self._records):
            record = self._records[key_id]
            if not self.active(key_id) or access.INFER not in access.privileges_of(record.roles, record.privileges):
                continue
            verifier = out.keys.add(
                key_id=key_id,
                salt=record.salt,
                secret_hash=record.secret_hash,
                iterations=record.hash_iterations,
                user=record.user,
            )
            if record.HasField("expires_at"):
                verifier.expires_at.CopyFrom(record.expires_at)
        return out

    # ---- bootstrap ------------------------------------------------------------------------
    def bootstrap(self, data_dir: Path) -> str | None:
        """With no key at all: create the admin key, save it to DATA_DIR/admin.key (0600), return the token."""
        if self._records:
            return None
        record, token = self._new_record(
            user="admin", roles=["admin"], privileges=[], name="bootstrap admin key", expires_at=None,
            created_by="", node_id="",
        )  # fmt: skip
        # The file first: if the record cannot be written, the next start bootstraps again.
        write_secret_file(data_dir / ADMIN_KEY_FILE, token + "\n")
        self._save(record)
        return token


def _used_up(record: records_pb2.ApiKeyRecord) -> bool:
    return record.join and record.max_uses > 0 and record.uses >= record.max_uses


def _check_join(req: auth_pb2.CreateApiKeyRequest, *, wanted: frozenset[str], node_id: str) -> None:
    """A join token grants only the agent privilege, binds no node, and max_uses is for join tokens only."""
    if not req.join:
        if req.max_uses:
            raise errors.InvalidArgument("max_uses limits a join token: set join as well")
        return
    if wanted != {access.AGENT}:
        raise errors.InvalidArgument(
            f"a join token grants only the agent privilege (role agent), not {', '.join(sorted(wanted - {access.AGENT}))}"
        )
    if node_id:
        raise errors.InvalidArgument("a join token binds no node (node_id must be empty): each node it registers gets its own key")
    if not 0 <= req.max_uses <= MAX_JOIN_USES:
        raise errors.InvalidArgument(f"max_uses must be between 0 (any number) and {MAX_JOIN_USES}, got {req.max_uses}")


def _checked_grants(req: auth_pb2.CreateApiKeyRequest) -> tuple[list[str], list[str], frozenset[str]]:
    """The requested roles and extra privileges (deduplicated, known) and the privileges they grant."""
    roles = list(dict.fromkeys(req.roles))
    extra = list(dict.fromkeys(req.privileges))
    for i, role in enumerate(roles):
        if role not in access.ROLES:
            raise errors.InvalidArgument(f"roles[{i}] {role!r} is not a role: use {', '.join(sorted(access.ROLES))}")
    for i, privilege in enumerate(extra):
        if privilege not in access.PRIVILEGES:
            raise errors.InvalidArgument(
                f"privileges[{i}] {privilege!r} is not a privilege: use {', '.join(sorted(access.PRIVILEGES))}"
            )
    wanted = access.privileges_of(roles, extra)
    if not wanted:
        raise errors.InvalidArgument("a key needs at least one role or privilege (roles or privileges)")
    return roles, extra, wanted


def _checked_holder(req: auth_pb2.CreateApiKeyRequest, *, user: str, wanted: frozenset[str]) -> str:
    """Check who the key is for (user, name, node binding); returns the node_id it binds."""
    if not _USER.match(user):
        raise errors.InvalidArgument(
            f"user {user!r} is invalid: 1-64 letters, digits, '.', '_', '@', '+' or '-', starting with a letter or digit"
        )
    if len(req.name) > MAX_NAME_CHARS:
        raise errors.InvalidArgument(f"name is {len(req.name)} characters long; at most {MAX_NAME_CHARS} are allowed")
    node_id = check_id("node_id", req.node_id) if req.node_id not in ("", ANY_NODE) else req.node_id
    if node_id and access.AGENT not in wanted:
        raise errors.InvalidArgument("node_id binds an agent key: the key needs the agent privilege (role agent)")
    return node_id


def _check_creator_may_grant(creator: access.Principal, *, wanted: frozenset[str], expires_at: float | None) -> None:
    """A key never grants a privilege its creator lacks, nor outlives it."""
    missing = wanted - creator.privileges
    if missing:
        raise errors.PermissionDenied(
            f"a key cannot grant privileges its owner lacks: {creator.describe()} lacks {', '.join(sorted(missing))}"
        )
    if creator.expires_at is not None and (expires_at is None or expires_at > creator.expires_at):
        raise errors.PermissionDenied(
            f"the new key would outlive {creator.describe()}, which expires at {_when(creator.expires_at)}: "
            "give a ttl that ends before it"
        )
