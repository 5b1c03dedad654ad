"""control_plane.paging: sizes, clamping, tokens bound to their query, stable order."""

from __future__ import annotations

import pytest

from control_plane import paging
from control_plane.errors import InvalidArgument
from modelfleet.v1 import common_pb2

Q = paging.query_fingerprint("deployments", "view", "owner")


def page(size: int = 0, token: str = "") -> common_pb2.PageRequest:
    return common_pb2.PageRequest(page_size=size, page_token=token)


def walk(items: list[str], size: int, query: str = Q) -> list[list[str]]:
    pages, token = [], ""
    while True:
        got = paging.paginate(items, key=lambda s: (s,), page=page(size, token), query=query)
        pages.append(got.items)
        token = got.next_page_token
        if not token:
            return pages


def test_pages_split_the_sorted_items_and_the_last_has_no_token() -> None:
    items = [f"d{i:03d}" for i in range(25)][::-1]
    pages = walk(items, 10)
    assert [len(p) for p in pages] == [10, 10, 5] and [i for p in pages for i in p] == sorted(items)
    assert walk([], 10) == [[]] and walk(["a", "b"], 2) == [["a", "b"]]


def test_sizes_default_clamp_and_refuse_negatives() -> None:
    assert paging.page_size(page(0)) == 100 and paging.page_size(page(7)) == 7
    assert paging.page_size(page(10**6)) == 1000
    with pytest.raises(InvalidArgument, match=r"page.page_size must be >= 0 \(0 = 100, at most 1000\), got -3"):
        paging.page_size(page(-3))


def test_a_token_resumes_after_its_key_even_when_items_changed_in_between() -> None:
    first = paging.paginate(["a", "b", "c", "d"], key=lambda s: (s,), page=page(2), query=Q)
    assert first.items == ["a", "b"]
    # "b" deleted and "aa" added before the token: neither repeats nor skips what was after "b"
    second = paging.paginate(["a", "aa", "c", "d", "e"], key=lambda s: (s,), page=page(2, first.next_page_token), query=Q)
    assert second.items == ["c", "d"] and second.next_page_token


def test_tokens_of_another_query_or_not_ours_are_refused() -> None:
    token = paging.paginate(["a", "b"], key=lambda s: (s,), page=page(1), query=Q).next_page_token
    with pytest.raises(InvalidArgument, match="page.page_token was issued for another query"):
        paging.paginate(["a", "b"], key=lambda s: (s,), page=page(1, token), query=paging.query_fingerprint("other"))
    for bad in ("!!!", "e30", token[:5]):
        with pytest.raises(InvalidArgument, match="page.page_token is not a token this API issued"):
            paging.decode_token(bad, query=Q)


def test_composite_keys_order_by_each_part() -> None:
    items = [("m", 2), ("a", 10), ("m", 1), ("a", 9)]
    got = paging.paginate(items, key=lambda t: t, page=page(3), query=Q)
    assert got.items == [("a", 9), ("a", 10), ("m", 1)]
    rest = paging.paginate(items, key=lambda t: t, page=page(3, got.next_page_token), query=Q)
    assert rest.items == [("m", 2)] and not rest.next_page_token
