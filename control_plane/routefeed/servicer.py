"""The Gateways servicer: protobuf in, the routes feed, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from control_plane.routefeed.feed import RoutesFeed
from modelfleet.v1 import gateways_pb2, gateways_pb2_grpc


class GatewaysServicer(gateways_pb2_grpc.GatewaysServicer):
    def __init__(self, feed: RoutesFeed) -> None:
        self.feed = feed

    async def WatchRoutes(
        self, request: gateways_pb2.WatchRoutesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[gateways_pb2.RoutesUpdate]:
        async for update in self.feed.watch(request):
            yield update
