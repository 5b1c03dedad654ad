"""The Gateways servicer: protobuf in, the routes feed and the gateway reports, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from control_plane import paging
from control_plane.routefeed.feed import RoutesFeed
from control_plane.routefeed.reports import GatewayReports
from modelfleet.v1 import gateways_pb2, gateways_pb2_grpc


class GatewaysServicer(gateways_pb2_grpc.GatewaysServicer):
    def __init__(self, feed: RoutesFeed, reports: GatewayReports | None = None) -> None:
        self.feed = feed
        self.reports = reports or GatewayReports()

    async def WatchRoutes(
        self, request: gateways_pb2.WatchRoutesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[gateways_pb2.RoutesUpdate]:
        async for update in self.feed.watch(request):
            yield update

    async def ReportGatewayStats(
        self, request: gateways_pb2.ReportGatewayStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateways_pb2.ReportGatewayStatsResponse:
        return self.reports.record(request)

    async def ListGateways(
        self, request: gateways_pb2.ListGatewaysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateways_pb2.ListGatewaysResponse:
        known = self.reports.gateways(epoch=self.feed.epoch, revision=self.feed.revision, watching=list(self.feed.watching))
        query = paging.query_fingerprint("gateways")
        page = paging.paginate(known, key=lambda g: (0 if g.embedded else 1, g.gateway_id), page=request.page, query=query)
        return gateways_pb2.ListGatewaysResponse(gateways=page.items, next_page_token=page.next_page_token)
