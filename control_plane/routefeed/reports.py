"""What the gateways report: the counters of every gateway process
(`modelfleet.v1.Gateways/ReportGatewayStats`, about once a second each) and
the list of gateways (`ListGateways`).

A report replaces the gateway's previous one (counters are cumulative since
the gateway started). A gateway whose last report is older than `timeout`
seconds is not live: it drops out of the deployment stats and shows as not
live in the list; after `forget_after` seconds it is forgotten. The
embedded gateway (the control plane's own) is always live and always
listed. `now`/`wall` are the clocks (monotonic, wall), injectable for tests.
Event-loop only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from control_plane import errors
from modelfleet.v1 import common_pb2, deployments_pb2, gateways_pb2

REPORT_INTERVAL_S = 1.0
DEFAULT_TIMEOUT_S = 3.0
DEFAULT_FORGET_AFTER_S = 300.0
EMBEDDED_ID = "embedded"
MAX_ID_LEN = 256
MAX_DEPLOYMENTS_PER_REPORT = 10_000

@dataclass
class _Report:
    request: gateways_pb2.ReportGatewayStatsRequest
    received: float  # monotonic
    received_wall: float


def check_report(request: gateways_pb2.ReportGatewayStatsRequest) -> None:
    """INVALID_ARGUMENT naming the field for a report no gateway sends."""
    if not request.gateway_id or len(request.gateway_id) > MAX_ID_LEN:
        raise errors.InvalidArgument(f"gateway_id must be 1-{MAX_ID_LEN} characters, got {len(request.gateway_id)}")
    if request.gateway_id == EMBEDDED_ID:
        raise errors.InvalidArgument(f"gateway_id '{EMBEDDED_ID}' is the control plane's own gateway")
    if len(request.address) > MAX_ID_LEN:
        raise errors.InvalidArgument(f"address must be at most {MAX_ID_LEN} characters, got {len(request.address)}")
    if len(request.deployments) > MAX_DEPLOYMENTS_PER_REPORT:
        raise errors.InvalidArgument(
            f"deployments must hold at most {MAX_DEPLOYMENTS_PER_REPORT} entries, got {len(request.deployments)}"
        )


class GatewayReports:
    """The last report of every gateway process (see the module docstring)."""

    def __init__(
        self,
        *,
        embedded: Callable[[str], common_pb2.InferenceStats | None] | None = None,
        embedded_address: str = "",
        timeout: float = DEFAULT_TIMEOUT_S,
        forget_after: float = DEFAULT_FORGET_AFTER_S,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._embedded = embedded
        self.embedded_address = embedded_address
        self._timeout = timeout
        self._forget_after = forget_after
        self._now = now
        self._wall = wall
        self._reports: dict[str, _Report] = {}

    def record(self, request: gateways_pb2.ReportGatewayStatsRequest) -> gateways_pb2.ReportGatewayStatsResponse:
        check_report(request)
        self._reports[request.gateway_id] = _Report(request, self._now(), self._wall())
        self._forget()
        return gateways_pb2.ReportGatewayStatsResponse(report_interval_s=REPORT_INTERVAL_S)

    def _forget(self) -> None:
        cutoff = self._now() - self._forget_after
        for gid in [g for g, r in self._reports.items() if r.received < cutoff]:
            del self._reports[gid]

    def _live(self) -> Iterable[tuple[str, _Report]]:
        cutoff = self._now() - self._timeout
        return ((g, r) for g, r in sorted(self._reports.items()) if r.received >= cutoff)

    def deployment(self, deployment_id: str) -> list[deployments_pb2.GatewayCounters]:
        """Every live gateway's counters for the deployment (the embedded one first, when it saw any)."""
        out: list[deployments_pb2.GatewayCounters] = []
        seen = self._embedded(deployment_id) if self._embedded is not None else None
        if seen is not None:
            entry = deployments_pb2.GatewayCounters(gateway_id=EMBEDDED_ID, address=self.embedded_address, stats=seen)
            entry.last_report.FromNanoseconds(int(self._wall() * 1e9))
            out.append(entry)
        for gid, report in self._live():
            for counters in report.request.deployments:
                if counters.deployment_id == deployment_id:
                    entry = deployments_pb2.GatewayCounters(
                        gateway_id=gid, address=report.request.address, stats=counters.stats
                    )
                    entry.last_report.FromNanoseconds(int(report.received_wall * 1e9))
                    out.append(entry)
        return out

    def gateways(self, *, epoch: int, revision: int, watching: Iterable[str]) -> list[gateways_pb2.GatewayInfo]:
        """Every gateway known: the embedded one, then those that reported or watch now, by id."""
        open_ids = set(watching)
        now = self._now()
        out = [gateways_pb2.GatewayInfo(
            gateway_id=EMBEDDED_ID, address=self.embedded_address, embedded=True, revision=revision, live=True,
        )]  # fmt: skip
        out[0].last_report.FromNanoseconds(int(self._wall() * 1e9))
        for gid in sorted(set(self._reports) | open_ids):
            info = gateways_pb2.GatewayInfo(gateway_id=gid, watching=gid in open_ids, behind=-1)
            report = self._reports.get(gid)
            if report is not None:
                r = report.request
                info.address, info.revision, info.stale = r.address, r.revision, r.stale
                info.behind = revision - r.revision if r.epoch == epoch else -1
                info.seconds_since_report = now - report.received
                info.live = info.seconds_since_report <= self._timeout
                info.last_report.FromNanoseconds(int(report.received_wall * 1e9))
            out.append(info)
        return out
