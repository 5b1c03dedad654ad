"""The standalone gateway's end of the routes watch: keeps one
`WatchRoutes` stream open to a control plane (the addresses are tried in
turn) and applies every update to the `WatchedRouteSource`.

While the stream is down the gateway keeps serving from what it holds and
is `stale`; it reconnects after a short backoff (at most `MAX_BACKOFF_S`, so
it catches up within a second of the control plane's return) and resumes
from the epoch and revision it holds: the control plane sends only what was
missed, or a fresh snapshot after a restart. An update that does not follow
(OutOfOrder) or a refusal of the revision asks for a fresh snapshot on the
next connect. Event-loop only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import grpc

from control_plane.gateway.watched import OutOfOrder, WatchedRouteSource
from modelfleet.v1 import gateways_pb2, gateways_pb2_grpc

log = logging.getLogger(__name__)

BACKOFF_S = (0.05, 0.1, 0.2, 0.4)
MAX_BACKOFF_S = BACKOFF_S[-1]
_FATAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class Follower:
    """Follows the routes watch (see the module docstring)."""

    def __init__(
        self,
        *,
        addresses: Sequence[str],
        source: WatchedRouteSource,
        token: str,
        gateway_id: str,
        credentials: grpc.ChannelCredentials | None = None,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._addresses = list(addresses)
        self._source = source
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.gateway_id = gateway_id
        self._credentials = credentials
        self._on_state = on_state
        self.stale = True
        self.stale_since = time.monotonic()
        self.reconnects = 0
        self._fresh = True  # ask for a snapshot on the next connect

    def _set_stale(self, stale: bool) -> None:
        if stale == self.stale:
            return
        self.stale = stale
        self.stale_since = time.monotonic()
        if self._on_state is not None:
            self._on_state(stale)

    def _request(self) -> gateways_pb2.WatchRoutesRequest:
        if self._fresh or not self._source.synced:
            return gateways_pb2.WatchRoutesRequest(gateway_id=self.gateway_id)
        return gateways_pb2.WatchRoutesRequest(
            epoch=self._source.epoch, revision=self._source.revision, gateway_id=self.gateway_id
        )

    def _channel(self, address: str) -> grpc.aio.Channel:
        options = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 10_000), ("grpc.max_receive_message_length", 256 << 20)]
        if self._credentials is not None:
            return grpc.aio.secure_channel(address, self._credentials, options=options)
        return grpc.aio.insecure_channel(address, options=options)

    async def _follow(self, address: str) -> None:
        """One stream, until it ends; raises grpc.aio.AioRpcError when refused or broken."""
        async with self._channel(address) as channel:
            call = gateways_pb2_grpc.GatewaysStub(channel).WatchRoutes(self._request(), metadata=self._metadata)
            async for update in call:
                try:
                    self._source.apply(update)
                except OutOfOrder as exc:
                    log.warning("%s; asking %s for a fresh snapshot", exc, address)
                    self._fresh = True
                    return
                self._fresh = False
                self._set_stale(False)

    async def run(self) -> None:
        """Follow until cancelled."""
        attempt = 0
        while True:
            address = self._addresses[(self.reconnects) % len(self._addresses)]
            try:
                await self._follow(address)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    self._fresh = True
                level = logging.ERROR if exc.code() in _FATAL else logging.INFO
                log.log(level, "routes watch on %s ended: %s %s", address, exc.code().name, exc.details())
            if not self.stale:  # it was serving fresh routes: start the backoff over
                attempt = 0
            self._set_stale(True)
            self.reconnects += 1
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1
