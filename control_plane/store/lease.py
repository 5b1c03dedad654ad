"""The leader lease as the store reports it (control_plane.leader uses it;
control_plane.store.postgres keeps it). Free of psycopg, so that a control
plane on SQLite imports none of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Lease:
    """The lease row as the database saw it at `now` (its own clock)."""

    holder: str
    address: str
    epoch: int
    expires_at: datetime
    now: datetime

    @property
    def live(self) -> bool:
        return bool(self.holder) and self.expires_at > self.now


@dataclass(frozen=True)
class Replica:
    holder: str
    address: str
    started_at: datetime
    seen_at: datetime
