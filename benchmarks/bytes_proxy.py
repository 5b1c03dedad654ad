"""The reference for what forwarding a call costs in Python gRPC: a bare
grpc.aio proxy that passes ModelInfer on to one worker as raw bytes.

    python benchmarks/bytes_proxy.py --target HOST:PORT --port-file F [--token-file F] [--channels N]

One generic handler for `/inference.GRPCInferenceService/ModelInfer`: no
deserialization (request and reply stay bytes), no interceptors, no
validation, no routing, no statistics; the worker token is presented as
`authorization` on every forwarded call. `--channels N` spreads the calls
over N channels to the worker (round robin, each its own connection), the
knob benchmarks/gateway_tier.py sweeps.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from pathlib import Path
from typing import Any

import grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"
OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.use_local_subchannel_pool", 1),
]


async def serve(args: argparse.Namespace) -> None:
    channels = [grpc.aio.insecure_channel(args.target, options=OPTIONS) for _ in range(args.channels)]
    forwards = itertools.cycle([channel.unary_unary(METHOD) for channel in channels])
    token = Path(args.token_file).read_text().strip() if args.token_file else ""
    metadata = (("authorization", f"Bearer {token}"),) if token else None

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            reply: bytes = await next(forwards)(request, metadata=metadata, timeout=30)
            return reply
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
            raise

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}
    )
    server = grpc.aio.server(options=OPTIONS[:2])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(args.port_file).write_text(str(port))
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True, help="the worker, HOST:PORT")
    p.add_argument("--port-file", required=True)
    p.add_argument("--token-file", default="", help="the worker token to present")
    p.add_argument("--channels", type=int, default=1)
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
