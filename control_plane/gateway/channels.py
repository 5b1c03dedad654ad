"""Channels from the gateway to workers: one per worker address, opened on
first use (TLS when worker credentials are configured), closed when no
route names the address and no call uses it. Event-loop only.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from control_plane.gateway.wire import IDENTITY, SERVICE

KEEPALIVE_MS = 1000


class ChannelPool:
    """worker address -> (channel, its ModelInfer raw-bytes callable)."""

    def __init__(self, *, max_message_bytes: int, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A silent peer (packets dropped, no reset) would hold calls until their deadline:
            # ping every second while calls are open, and close the transport when a ping (or
            # sent data: gRPC sets TCP_USER_TIMEOUT to the same) is not acknowledged in a second.
            # The worker permits these pings (node_agent.worker.server).
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_MS),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        self._credentials = credentials  # TLS to workers; None = plaintext
        self._channels: dict[str, tuple[grpc.aio.Channel, grpc.aio.UnaryUnaryMultiCallable]] = {}

    def call(self, address: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """The ModelInfer callable of the worker at address (its channel opened on first use)."""
        entry = self._channels.get(address)
        if entry is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(address, self._credentials, options=self._options)
            else:
                channel = grpc.aio.insecure_channel(address, options=self._options)
            call = channel.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=IDENTITY, response_deserializer=IDENTITY)
            entry = self._channels[address] = (channel, call)
        return entry[1]

    def state(self, address: str, *, connect: bool = False) -> grpc.ChannelConnectivity | None:
        """The connectivity of the worker's channel (None: no channel yet); `connect` starts
        connecting an idle one."""
        entry = self._channels.get(address)
        return entry[0].get_state(try_to_connect=connect) if entry is not None else None

    def method(self, address: str, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """Another V2 method of the worker at address, raw bytes in and out, on the same channel."""
        self.call(address)
        channel = self._channels[address][0]
        return channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=IDENTITY, response_deserializer=IDENTITY)

    async def prune(self, *, keep: Callable[[str], bool]) -> int:
        """Close the channels whose address `keep` refuses. Returns how many."""
        gone = [a for a in self._channels if not keep(a)]
        for address in gone:
            channel, _ = self._channels.pop(address)
            await channel.close()
        return len(gone)

    async def close(self) -> None:
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()
