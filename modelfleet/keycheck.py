"""API keys checked from streamed verifiers, by whoever serves without the
control plane's key store: the standalone gateway and the workers.

A verifier (`agent_pb2.KeyVerifier`) carries a key's salt, PBKDF2 iteration
count, secret hash and expiry, never the secret. `VerifiedTokens` checks a
token's secret against one and remembers the tokens that passed (by sha256,
bounded), so a caller's repeated calls cost one PBKDF2, not one each. The
messages and status codes of a refusal are the caller's.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import re
import time

from modelfleet.v1 import agent_pb2

TOKEN = re.compile(r"^mfk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")  # mfk_<key id>_<secret>
CACHE_LIMIT = 10_000


class VerifiedTokens:
    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self._limit = limit
        self._verified: collections.OrderedDict[bytes, str] = collections.OrderedDict()

    async def secret_matches(self, token: str, *, key_id: str, secret: str, verifier: agent_pb2.KeyVerifier) -> bool:
        """Whether the token's secret hashes to the verifier's (PBKDF2 in a thread, once per token)."""
        digest = hashlib.sha256(token.encode()).digest()
        if self._verified.get(digest) == key_id:
            return True
        got = await asyncio.to_thread(hashlib.pbkdf2_hmac, "sha256", secret.encode(), verifier.salt, verifier.iterations)
        if not hmac.compare_digest(got, verifier.secret_hash):
            return False
        self._verified[digest] = key_id
        if len(self._verified) > self._limit:
            self._verified.popitem(last=False)
        return True


def expired(verifier: agent_pb2.KeyVerifier) -> bool:
    """Whether the verifier's key has an expiry that has passed."""
    return verifier.HasField("expires_at") and time.time() >= verifier.expires_at.seconds + verifier.expires_at.nanos / 1e9
