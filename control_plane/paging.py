"""Pages of every List RPC: the contract of `modelfleet.v1.PageRequest`.

A page token is the sort key of the last item a page returned plus a
fingerprint of the query (filters and view) that produced it, base64url
JSON. It holds no server state, so a token keeps working across a restart
of the control plane or a change of leader; a token presented with another
query is refused (the items after its key would be a different list).
Items are ordered by a stable key (ids, then versions or seqs), so a page
boundary never skips or repeats an item that existed when both pages were
read. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from control_plane.errors import InvalidArgument
from modelfleet.v1 import common_pb2

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_TOKEN_VERSION = 1

T = TypeVar("T")
Key = tuple[str | int, ...]


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of items and the token of the next one ("" = this is the last)."""

    items: list[T]
    next_page_token: str


def page_size(page: common_pb2.PageRequest, *, field: str = "page.page_size") -> int:
    """The size asked for: 0 = the default, larger than the maximum = the maximum."""
    if page.page_size < 0:
        raise InvalidArgument(f"{field} must be >= 0 (0 = {DEFAULT_PAGE_SIZE}, at most {MAX_PAGE_SIZE}), got {page.page_size}")
    if page.page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page.page_size, MAX_PAGE_SIZE)


def query_fingerprint(*parts: object) -> str:
    """A short digest of what selects and shapes the items (filters, view), for tokens."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def encode_token(*, query: str, after: Key) -> str:
    raw = json.dumps({"v": _TOKEN_VERSION, "q": query, "a": list(after)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, *, query: str, field: str = "page.page_token") -> Key | None:
    """The key the token resumes after (None for ""); INVALID_ARGUMENT for a token of another query."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        version, fingerprint, after = data["v"], data["q"], data["a"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument(f"{field} is not a token this API issued: pass the next_page_token of the previous page") from None
    if version != _TOKEN_VERSION or not isinstance(after, list) or not all(isinstance(k, str | int) for k in after):
        raise InvalidArgument(f"{field} is not a token this API issued: pass the next_page_token of the previous page")
    if fingerprint != query:
        raise InvalidArgument(f"{field} was issued for another query: keep the filters and view of the request that returned it")
    return tuple(after)


def paginate(items: Iterable[T], *, key: Callable[[T], Key], page: common_pb2.PageRequest, query: str) -> Page[T]:
    """The page of items (sorted by key) after the token's key, at most page_size of them."""
    size = page_size(page)
    after = decode_token(page.page_token, query=query)
    keyed: Sequence[tuple[Key, T]] = sorted(((key(item), item) for item in items), key=lambda pair: pair[0])
    if after is not None:
        keyed = [pair for pair in keyed if pair[0] > after]
    chosen = keyed[:size]
    more = len(keyed) > size
    token = encode_token(query=query, after=chosen[-1][0]) if more and chosen else ""
    return Page(items=[item for _, item in chosen], next_page_token=token)
