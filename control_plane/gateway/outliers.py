"""Outlier ejection: which workers the gateway keeps out of its rotation
because they stopped answering, long before the control plane declares
their node lost (Envoy's outlier detection, consecutive-failure kind).

A worker (keyed by its address: one channel per address) is ejected when
`threshold` calls in a row failed on the transport: the connection could
not be made (UNAVAILABLE that is not the worker's own answer), or the call
passed its deadline (a silent host: packets dropped, no reset); or at once
when a call failed because its connection broke (the gateway's keepalive
closes a connection whose peer went silent) or the channel is in
TRANSIENT_FAILURE. Any answer from the worker, an error status included,
ends the streak: the worker is reachable.

An ejected worker stays out for a back-off, `base_s` doubling with each
ejection in a row up to `max_s`; then it is probed: the gateway checks its
channel (not connected: ejected again, longer, while it connects) and lets
one trial call through, the others still going elsewhere. Any answer (the trial's
or a late one) returns the worker to the rotation; a failed trial ejects it
again. The
doubling resets once a returned worker has stayed in for `max_s`.

`routable` never leaves a deployment with nothing: when every candidate is
out, all of them are routed to (Envoy's panic mode), since failing every
call for sure is worse than trying a worker that may be back.

Pure logic with an injected clock; event-loop only (no locks). The gateway
(control_plane.gateway.service) reports outcomes and counts ejections per
deployment for /metrics.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Worker:
    streak: int = 0  # transport failures in a row
    level: int = 0  # ejections in a row: the back-off is base_s * 2**(level-1)
    until: float | None = None  # ejected until this time; None = in the rotation
    trial: bool = False  # a trial call is in flight (the worker is out until it ends)
    returned_at: float = 0.0
    deployment: str = ""  # of the worker's last failure: the gauge's label


class Outliers:
    """Per worker address: the failure streak and the ejection state (see the module docstring)."""

    def __init__(
        self,
        *,
        threshold: int = 3,
        base_s: float = 1.0,
        max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"outlier threshold must be at least 1, got {threshold}")
        self.threshold = threshold
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        self._workers: dict[str, _Worker] = {}
        self.ejections: collections.Counter[str] = collections.Counter()  # by deployment, for /metrics

    # ---- routing ----------------------------------------------------------------------
    def out(self, address: str) -> bool:
        """True while the worker is ejected or on trial (what the gauge counts)."""
        w = self._workers.get(address)
        return w is not None and w.until is not None

    def ejected(self) -> collections.Counter[str]:
        """Deployment -> its workers now out (ejected or on trial); safe from a scrape thread."""
        return collections.Counter(w.deployment for w in list(self._workers.values()) if w.until is not None)

    def available(self, address: str) -> bool:
        """True when a call may go to the worker: in the rotation, or due for its trial call."""
        w = self._workers.get(address)
        if w is None or w.until is None:
            return True
        return not w.trial and self._clock() >= w.until

    def routable(self, candidates: Sequence[T], address: Callable[[T], str]) -> Sequence[T]:
        """The candidates a call may go to; all of them when every one is out."""
        if not self._workers:
            return candidates
        kept = [c for c in candidates if self.available(address(c))]
        return kept or candidates

    def begin(self, address: str) -> bool:
        """A call is being sent to the worker. Returns True when it is the worker's trial call."""
        w = self._workers.get(address)
        if w is None or w.until is None or w.trial or self._clock() < w.until:
            return False
        w.trial = True
        return True

    # ---- outcomes ---------------------------------------------------------------------
    def answered(self, address: str, *, trial: bool) -> None:
        """The worker answered (any status of its own): reachable."""
        w = self._workers.get(address)
        if w is None:
            return
        w.streak = 0
        if trial:
            w.trial = False
        if w.until is not None:  # the trial call, or one sent before the ejection or in panic mode
            w.until = None
            w.returned_at = self._clock()
            log.info("worker %s answered a call: back in the rotation", address)
        if w.until is None and w.level and self._clock() - w.returned_at >= self.max_s:
            w.level = 0
        if w.until is None and not w.level:
            del self._workers[address]

    def due(self, address: str) -> bool:
        """True when the worker is out, its back-off is over and no trial call is in flight."""
        w = self._workers.get(address)
        return w is not None and w.until is not None and not w.trial and self._clock() >= w.until

    def failed(self, address: str, *, deployment: str, trial: bool, reason: str, at_once: bool = False) -> None:
        """A call to the worker failed on the transport (no connection, broken, or past its
        deadline); `at_once`: its connection is gone, so no streak is waited for."""
        w = self._workers.setdefault(address, _Worker())
        w.deployment = deployment
        if trial:
            w.trial = False
            self._eject(address, w, deployment=deployment, reason=f"trial call failed: {reason}")
            return
        if w.until is not None:
            return  # already out (a call sent in panic mode, or before the ejection)
        w.streak += 1
        if at_once or w.streak >= self.threshold:
            self._eject(address, w, deployment=deployment, reason=f"{w.streak} calls in a row failed, last: {reason}")

    def abandoned(self, address: str, *, trial: bool) -> None:
        """A call ended with no verdict on the worker (cancelled by its client): free the trial."""
        w = self._workers.get(address)
        if trial and w is not None:
            w.trial = False

    def channel_failed(self, address: str, *, deployment: str, reason: str = "channel in TRANSIENT_FAILURE") -> None:
        """The worker's channel is failing (or, at a probe, not connected): out now, or out
        again for longer when its back-off is over."""
        w = self._workers.setdefault(address, _Worker())
        w.deployment = deployment
        if w.until is not None and (w.trial or self._clock() < w.until):
            return
        self._eject(address, w, deployment=deployment, reason=reason)

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop the state of workers `keep` refuses (gone from every route)."""
        for address in [a for a in self._workers if not keep(a)]:
            del self._workers[address]

    def _eject(self, address: str, w: _Worker, *, deployment: str, reason: str) -> None:
        now = self._clock()
        if w.until is None and w.level and now - w.returned_at >= self.max_s:
            w.level = 0
        w.level += 1
        backoff = min(self.max_s, self.base_s * 2 ** (w.level - 1))
        w.until, w.streak = now + backoff, 0
        self.ejections[deployment] += 1
        log.warning("worker %s of deployment %s ejected for %.1fs: %s", address, deployment, backoff, reason)
