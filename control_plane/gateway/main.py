"""`modelfleet-gateway`: the inference gateway as its own process(es), fed by
the routes watch (modelfleet.v1.Gateways/WatchRoutes) of the control plane.

    modelfleet-gateway --control-plane ADDR[,ADDR...] --listen HOST:PORT \
        [--processes N] [--token-file F | MODELFLEET_TOKEN=...] \
        [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--tls-ca PEM] \
        [--worker-tls-ca PEM] [--metrics-port P [--metrics-host ADDR]] [--http-listen HOST:PORT] [--ready-file F]

Each process serves `inference.GRPCInferenceService` with the one gateway
implementation the control plane embeds (control_plane.gateway.service),
reading routes from a `WatchedRouteSource`, checking callers' API keys
against the streamed verifiers (control_plane.gateway.callers), plus
grpc.health: "" is SERVING from the first snapshot on (before it the
gateway knows no route; a readiness probe) and stays SERVING while the watch
is down, as the gateway keeps serving from its last snapshot; service
"modelfleet.v1.Gateways" is NOT_SERVING while the watch is down (a detail
for operators, never a probe: it would take every gateway out of a load
balancer in a control-plane outage). N processes (default: one per core) share
the port with SO_REUSEPORT (control_plane.gateway.processes). The token is a
key of the `gateway` role. `--tls-ca` is the CA that signed the control
plane's certificate (a client certificate for mTLS is --tls-cert/--tls-key);
`--worker-tls-ca` reaches TLS workers. Process i serves /metrics on
`--metrics-port` + i (0: any free port) on `--metrics-host`. `--http-listen` serves KServe V2
REST (control_plane.rest.gateway_app: the control plane's V2 routes, infer
included, under this gateway's key check) on a second port that the
processes share the same way. `--ready-file` gets JSON `{"port": P,
"http_port": H, "pids": [...], "metrics_ports": [...]}` once every process
serves (`http_port` only with --http-listen).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from control_plane.gateway.callers import GatewayAccess, Verifiers
from control_plane.gateway.follow import Follower
from control_plane.gateway.metrics import GatewayCollector, serve_metrics
from control_plane.gateway.processes import CHILD_READY_ENV, run_processes
from control_plane.gateway.report import report_forever
from control_plane.gateway.service import Gateway, add_gateway_to_server
from control_plane.gateway.watched import WatchedRouteSource
from control_plane.rest.gateway_app import build_gateway_app
from control_plane.rest.listener import RestServer, product_version
from modelfleet import rpc
from modelfleet.tls import channel_credentials, server_credentials

log = logging.getLogger("modelfleet.gateway")
WATCH_SERVICE = "modelfleet.v1.Gateways"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelfleet-gateway", description="the inference gateway, fed by the control plane's routes watch")
    p.add_argument("--control-plane", required=True, metavar="ADDR[,ADDR...]", help="control plane address(es), tried in turn")
    p.add_argument("--listen", default="127.0.0.1:8001", metavar="HOST:PORT", help="where to serve (port 0 = any free port)")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1, metavar="N", help="processes sharing the port (default: one per core)")
    p.add_argument("--token-file", default="", metavar="F", help="a key of the gateway role (else $MODELFLEET_TOKEN)")
    p.add_argument("--tls-cert", default="", metavar="PEM", help="serve TLS with this certificate (and present it to the control plane)")
    p.add_argument("--tls-key", default="", metavar="PEM")
    p.add_argument("--tls-client-ca", default="", metavar="PEM", help="demand client certificates signed by this CA (mTLS)")
    p.add_argument("--tls-ca", default="", metavar="PEM", help="reach the control plane over TLS, trusting this CA")
    p.add_argument("--worker-tls-ca", default="", metavar="PEM", help="reach workers over TLS, trusting this CA")
    p.add_argument("--metrics-port", type=int, default=-1, metavar="P", help="Prometheus /metrics on P + process index (0: any)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDR", help="address /metrics binds (0.0.0.0 for a scraper elsewhere)")
    p.add_argument("--http-listen", default="", metavar="HOST:PORT", help="serve KServe V2 REST here too (port 0 = any free port)")
    p.add_argument("--max-message-bytes", type=int, default=64 << 20)
    p.add_argument("--ready-file", default="", metavar="F")
    p.add_argument("--gateway-id", default=f"{socket.gethostname()}", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="INFO")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the processes of --processes N are started with
    if args.processes < 1 or args.processes > 256:
        p.error(f"--processes must be between 1 and 256, got {args.processes}")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        p.error("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
    for flag, value in (("--listen", args.listen), ("--http-listen", args.http_listen or "h:0")):
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            p.error(f"{flag} must be HOST:PORT with a port 0-65535, got {value!r}")
    args.addresses = [a.strip() for a in args.control_plane.split(",") if a.strip()]
    if not args.addresses:
        p.error("--control-plane needs at least one address")
    try:
        args.token = Path(args.token_file).read_text().strip() if args.token_file else os.environ.get("MODELFLEET_TOKEN", "").strip()
    except OSError as exc:
        p.error(f"--token-file: cannot read {args.token_file}: {exc.strerror}")
    return args


def _server(args: argparse.Namespace, gateway: Gateway, access: GatewayAccess) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        interceptors=[rpc.ErrorMapping(logger=log), access],
        options=[
            ("grpc.max_receive_message_length", args.max_message_bytes),
            ("grpc.max_send_message_length", args.max_message_bytes),
            ("grpc.so_reuseport", 1),  # the processes of one host share the port
        ],
    )
    add_gateway_to_server(gateway, server)
    if args.tls_cert:
        port = server.add_secure_port(args.listen, server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca))
    else:
        port = server.add_insecure_port(args.listen)
    return server, port


def _follower(args: argparse.Namespace, source: WatchedRouteSource, health_servicer: health.aio.HealthServicer) -> Follower:
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    def set_status(service: str, status: Any) -> None:
        task = loop.create_task(health_servicer.set(service, status))
        pending.add(task)
        task.add_done_callback(pending.discard)

    def on_state(stale: bool) -> None:
        set_status(WATCH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING if stale else health_pb2.HealthCheckResponse.SERVING)
        if not stale:  # the first snapshot: from now on "" stays SERVING, through any outage
            set_status("", health_pb2.HealthCheckResponse.SERVING)

    return Follower(
        addresses=args.addresses, source=source, token=args.token, gateway_id=f"{args.gateway_id}/{os.getpid()}",
        credentials=channel_credentials(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None, on_state=on_state,
    )  # fmt: skip


async def serve(args: argparse.Namespace, *, on_ready: Callable[[dict[str, Any]], None]) -> None:
    """One gateway process: follow the watch and serve until SIGTERM/SIGINT."""
    source = WatchedRouteSource(Verifiers())
    worker_creds = channel_credentials(args.worker_tls_ca, args.tls_cert, args.tls_key) if args.worker_tls_ca else None
    gateway = Gateway(source=source, max_message_bytes=args.max_message_bytes, worker_credentials=worker_creds)
    # keys are checked unless the control plane runs with auth off (then it sends no verifiers)
    def access_required() -> bool:
        return not source.synced or source.verifiers.keys is not None

    access = GatewayAccess(source.verifiers, require=access_required)
    server, port = _server(args, gateway, access)
    if port == 0:
        raise SystemExit(f"error: cannot listen on {args.listen}")
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    follower = _follower(args, source, health_servicer)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # until the first snapshot
    await health_servicer.set(WATCH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    collector = GatewayCollector(gateway=gateway, follower=follower, source=source)
    metrics_port = serve_metrics(args.metrics_port, collector, host=args.metrics_host) if args.metrics_port >= 0 else -1
    stop = asyncio.Event()
    rest, http_port = await _start_rest(args, gateway, source, access_required=access_required, is_ready=lambda: not stop.is_set())
    tasks = [asyncio.create_task(follower.run()), asyncio.create_task(_prune(gateway))]
    tasks.append(asyncio.create_task(report_forever(
        addresses=args.addresses, token=args.token, gateway_id=follower.gateway_id, stats=gateway.stats, source=source,
        credentials=channel_credentials(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None,
        address=f"{args.listen.rpartition(':')[0]}:{port}", follower=follower,
    )))  # fmt: skip
    if os.environ.get(CHILD_READY_ENV):
        tasks.append(asyncio.create_task(_orphaned(stop)))
    on_ready({"port": port, "pid": os.getpid(), "metrics_port": metrics_port, "http_port": http_port})
    log.info("gateway serving on port %d, following %s", port, ",".join(args.addresses))
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    gateway.end_streams()
    if rest is not None:
        await rest.stop()
    await server.stop(1.0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await gateway.close()


async def _start_rest(args: argparse.Namespace, gateway: Gateway, source: WatchedRouteSource, *,
                      access_required: Callable[[], bool], is_ready: Callable[[], bool]) -> tuple[RestServer | None, int]:
    """REST V2 on --http-listen (SO_REUSEPORT, as the gRPC port), if asked for: the server and its port (else None, -1)."""
    if not args.http_listen:
        return None, -1
    app = build_gateway_app(gateway=gateway, verifiers=source.verifiers, require=access_required, is_ready=is_ready,
                            version=product_version(), max_body_bytes=args.max_message_bytes)
    rest = RestServer(app, reuse_port=True)
    bound = await rest.start(args.http_listen)
    return rest, int(bound.rpartition(":")[2])


async def _orphaned(stop: asyncio.Event) -> None:
    """A process of `--processes N` stops when its supervisor is gone (killed with SIGKILL)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("the supervisor (pid %d) is gone: stopping", parent)
    stop.set()


async def _prune(gateway: Gateway) -> None:
    while True:
        await asyncio.sleep(30)
        await gateway.prune_channels()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format=f"%(asctime)s gateway[{os.getpid()}] %(levelname)s %(name)s: %(message)s")
    run_processes(args, serve=serve)


if __name__ == "__main__":
    main()
