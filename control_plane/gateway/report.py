"""The standalone gateway's stats report: every `REPORT_INTERVAL_S` it sends
its per-deployment counters (cumulative since it started), its address and
the revision of the routes it holds to the control plane
(`modelfleet.v1.Gateways/ReportGatewayStats`, unary), trying the addresses
in turn. A failed report is dropped (the next one carries the same totals);
the control plane drops a gateway that stops reporting. Event-loop only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc

from control_plane.gateway.follow import Follower
from control_plane.gateway.stats import GatewayStats
from control_plane.gateway.watched import WatchedRouteSource
from modelfleet.v1 import gateways_pb2, gateways_pb2_grpc

log = logging.getLogger(__name__)
REPORT_INTERVAL_S = 1.0


def build_report(
    *, gateway_id: str, address: str, stats: GatewayStats, source: WatchedRouteSource, stale: bool
) -> gateways_pb2.ReportGatewayStatsRequest:
    out = gateways_pb2.ReportGatewayStatsRequest(
        gateway_id=gateway_id, address=address, epoch=source.epoch, revision=source.revision, stale=stale
    )
    for deployment_id in stats.deployments():
        counts = stats.get(deployment_id)
        if counts is not None:
            out.deployments.add(deployment_id=deployment_id, stats=counts)
    return out


async def report_forever(
    *,
    addresses: Sequence[str],
    token: str,
    credentials: grpc.ChannelCredentials | None,
    gateway_id: str,
    address: str,
    stats: GatewayStats,
    source: WatchedRouteSource,
    follower: Follower,
) -> None:
    """Report until cancelled (see the module docstring)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    turn = 0
    while True:
        target = addresses[turn % len(addresses)]
        channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
        async with channel:
            stub = gateways_pb2_grpc.GatewaysStub(channel)
            while True:
                report = build_report(gateway_id=gateway_id, address=address, stats=stats, source=source, stale=follower.stale)
                try:
                    await stub.ReportGatewayStats(report, metadata=metadata, timeout=REPORT_INTERVAL_S)
                except grpc.aio.AioRpcError as exc:
                    log.debug("stats report to %s failed: %s", target, exc.code().name)
                    turn += 1
                    await asyncio.sleep(REPORT_INTERVAL_S)
                    break
                await asyncio.sleep(REPORT_INTERVAL_S)
