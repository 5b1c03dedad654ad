"""Identifier rules for model, deployment and node ids, and the lookup of a
required id (one place).

An id is 1-64 characters: lowercase letters, digits, '-', '_' and '.',
starting and ending with a letter or digit (Elasticsearch's model id rule,
plus '.'). Errors name the field and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from control_plane.errors import InvalidArgument, NotFound
from modelfleet.idrule import ID_PATTERN, MAX_ID_LENGTH

T = TypeVar("T")

_ID = re.compile(ID_PATTERN)


def check_id(field: str, value: str) -> str:
    """Return value if it is a valid id, else raise InvalidArgument naming field."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field} is {len(value)} characters long; at most {MAX_ID_LENGTH} are allowed")
    if not _ID.match(value):
        raise InvalidArgument(
            f"{field} {value!r} is invalid: use lowercase letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return value


def lookup(kind: str, value: str, get: Callable[[str], T | None]) -> T:
    """The record get(value) of a request naming a `kind` (e.g. "deployment"):
    INVALID_ARGUMENT when no id is given, NOT_FOUND when there is no such record."""
    if not value:
        raise InvalidArgument(f"{kind}_id is required")
    record = get(value)
    if record is None:
        raise NotFound(f"{kind} '{value}' not found")
    return record
