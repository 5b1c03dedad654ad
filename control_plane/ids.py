"""Identifier rules for model, deployment and node ids (one place).

An id is 1-64 characters: lowercase letters, digits, '-', '_' and '.',
starting and ending with a letter or digit (Elasticsearch's model id rule,
plus '.'). Errors name the field and the rule.
"""

from __future__ import annotations

import re

from control_plane.errors import InvalidArgument

MAX_ID_LENGTH = 64
_ID = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")


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
