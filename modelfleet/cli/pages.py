"""Every page of a List RPC, for the CLI: follows next_page_token to the last
page, or stops once `--limit` items have come."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from modelfleet.cli.client import DEFAULT_RPC_TIMEOUT
from modelfleet.cli.parsing import arg_type, positive_int

MAX_PAGE_SIZE = 1000  # the server's maximum (common.proto PageRequest)

R = TypeVar("R", bound=Message)


def add_limit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=arg_type(positive_int, "limit"), default=0, metavar="N",
                        help="show at most N (default: all, fetched page by page)")


def collect(call: Callable[..., R], request: Any, field: str, *, limit: int = 0) -> R:
    """One response holding the items of every page (at most limit of them; 0 = all)."""
    merged: R | None = None
    token = ""
    while True:
        wanted = limit - len(getattr(merged, field)) if merged is not None and limit else limit
        request.page.page_size = min(wanted, MAX_PAGE_SIZE) if limit else MAX_PAGE_SIZE
        request.page.page_token = token
        resp = call(request, timeout=DEFAULT_RPC_TIMEOUT)
        if merged is None:
            merged = resp
        else:
            getattr(merged, field).extend(getattr(resp, field))
        token = resp.next_page_token
        if not token or (limit and len(getattr(merged, field)) >= limit):
            merged.ClearField("next_page_token")
            return merged
