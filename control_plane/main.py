"""`modelfleet-control-plane`: wires the store, registry, fleet, reconciler,
services and gateway into one grpc.aio server and runs its background loops.

Failure detection flags: --heartbeat-interval H and --node-timeout T (the
agent learns H from `welcome`), --recovery-grace (how long nodes known from
the store have to reconnect after a restart before they are lost), and the
HTTP/2 keepalive of every connection (--keepalive-*, RELIABILITY.md).

Loops (each phase wrapped so that an error is logged and the loop goes on):
- liveness sweep every min(heartbeat, 1 s) / 2: READY -> SUSPECT -> LOST;
- a reconcile tick every second (auto stop, placements waiting for capacity).

Once listening it writes DATA_DIR/endpoint (HOST:PORT actually bound, so
--listen 127.0.0.1:0 works) atomically. SIGTERM/SIGINT: health goes
NOT_SERVING, the server stops with a grace period, the store is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from control_plane.agents import AgentStreams, NodeService
from control_plane.blobs import BlobStore
from control_plane.deployments import DeploymentService
from control_plane.fleet import Fleet
from control_plane.gateway import Gateway, add_gateway_to_server
from control_plane.hub import ChangeHub
from control_plane.reconciler import Reconciler
from control_plane.registry import ModelRegistry
from control_plane.server import Keepalive, build_server, set_serving
from control_plane.servicers import AgentControlServicer, DeploymentsServicer, ModelRegistryServicer, NodesServicer
from control_plane.store import Store, open_store
from modelfleet.v1 import agent_pb2_grpc, deployments_pb2_grpc, models_pb2_grpc, nodes_pb2_grpc

log = logging.getLogger("control_plane")


class ControlPlane:
    def __init__(
        self,
        *,
        data_dir: Path,
        store: Store,
        heartbeat_interval: float = 5.0,
        node_timeout: float = 30.0,
        max_message_bytes: int = 64 << 20,
        default_auto_stop_s: int = 0,
        recovery_grace: float | None = None,
        keepalive: Keepalive | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.hub = ChangeHub()
        self.fleet = Fleet(heartbeat_interval=heartbeat_interval, node_timeout=node_timeout)
        self.fleet.recover((n.info.node_id for n in store.list_nodes()), grace=recovery_grace)
        self.reconciler = Reconciler(store=store, fleet=self.fleet, hub=self.hub)
        self.registry = ModelRegistry(
            store=store,
            blobs=BlobStore(data_dir / "blobs"),
            in_use=lambda model_id, version: self.deployments.model_in_use(model_id, version),
        )
        self.deployments = DeploymentService(
            reconciler=self.reconciler, hub=self.hub, registry=self.registry, default_auto_stop_s=default_auto_stop_s
        )
        self.gateway = Gateway(reconciler=self.reconciler, max_message_bytes=max_message_bytes)
        self.server, self.health = build_server(max_message_bytes=max_message_bytes, keepalive=keepalive)
        models_pb2_grpc.add_ModelRegistryServicer_to_server(ModelRegistryServicer(self.registry), self.server)
        deployments_pb2_grpc.add_DeploymentsServicer_to_server(DeploymentsServicer(self.deployments), self.server)
        nodes_pb2_grpc.add_NodesServicer_to_server(NodesServicer(NodeService(reconciler=self.reconciler)), self.server)
        agent_pb2_grpc.add_AgentControlServicer_to_server(AgentControlServicer(AgentStreams(reconciler=self.reconciler)), self.server)
        add_gateway_to_server(self.gateway, self.server)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, listen: str) -> str:
        try:
            port = self.server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise SystemExit(f"error: cannot listen on {listen}: {exc} (is another process using the port?)") from None
        if port == 0:
            raise SystemExit(f"error: cannot listen on {listen}")
        await self.server.start()
        host = listen.rsplit(":", 1)[0]
        endpoint = f"{host}:{port}"
        self.reconciler.reconcile()
        await set_serving(self.health, True)
        self._tasks = [
            asyncio.create_task(self._loop("liveness sweep", min(self.fleet.heartbeat_interval, 1.0) / 2, self._sweep)),
            asyncio.create_task(self._loop("reconcile", 1.0, self.reconciler.reconcile)),
        ]
        tmp = self.data_dir / "endpoint.tmp"
        tmp.write_text(endpoint)
        os.replace(tmp, self.data_dir / "endpoint")
        log.info("control plane listening on %s (data dir %s)", endpoint, self.data_dir)
        return endpoint

    def _sweep(self) -> None:
        changed = self.fleet.sweep()
        if changed:
            self.reconciler.on_liveness_change(changed)

    async def _loop(self, name: str, interval: float, step: object) -> None:
        while True:
            try:
                step()  # type: ignore[operator]
            except Exception:
                log.exception("%s failed; continuing", name)
            await asyncio.sleep(interval)

    async def stop(self, grace: float = 5.0) -> None:
        await set_serving(self.health, False)
        for task in self._tasks:
            task.cancel()
        await self.server.stop(grace)
        await self.gateway.close()
        self.store.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="modelfleet-control-plane", description="The modelfleet control plane.")
    p.add_argument("--listen", default=os.environ.get("MODELFLEET_LISTEN", "127.0.0.1:7070"), help="HOST:PORT (port 0 = any free port)")
    p.add_argument("--data-dir", default=os.environ.get("MODELFLEET_DATA_DIR", "./cp"), help="SQLite store, model blobs, endpoint file")
    p.add_argument("--store", default="", help="store URL (default: SQLite file in --data-dir; memory:// for tests)")
    p.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds between agent heartbeats (fractions allowed)")
    p.add_argument("--node-timeout", type=float, default=30.0, help="seconds without an agent before its node is lost")
    p.add_argument("--recovery-grace", type=float, default=None, metavar="S",
                   help="after a restart, seconds a known node has to reconnect before it is lost "
                        "(default: node timeout + 36 s, the longest agent reconnect backoff)")
    p.add_argument("--keepalive-time", type=float, default=10.0, metavar="S", help="ping idle connections every S seconds")
    p.add_argument("--keepalive-timeout", type=float, default=10.0, metavar="S", help="drop a connection whose ping is unanswered for S seconds")
    p.add_argument("--keepalive-min-ping-interval", type=float, default=5.0, metavar="S",
                   help="tolerate client pings down to S seconds apart; faster ones draw a GOAWAY after 2 strikes")
    p.add_argument("--max-message-bytes", type=int, default=64 << 20, help="largest gRPC message accepted or sent")
    p.add_argument("--default-auto-stop", type=float, default=0, help="hours after which new deployments stop (0 = never)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if args.heartbeat_interval <= 0 or args.node_timeout <= args.heartbeat_interval:
        p.error("--node-timeout must exceed --heartbeat-interval, and both must be positive")
    if args.recovery_grace is not None and args.recovery_grace < 0:
        p.error("--recovery-grace must be >= 0")
    if min(args.keepalive_time, args.keepalive_timeout, args.keepalive_min_ping_interval) <= 0:
        p.error("--keepalive-time, --keepalive-timeout and --keepalive-min-ping-interval must be positive")
    return args


async def _serve(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(args.store or data_dir)
    plane = ControlPlane(
        data_dir=data_dir,
        store=store,
        heartbeat_interval=args.heartbeat_interval,
        node_timeout=args.node_timeout,
        max_message_bytes=args.max_message_bytes,
        default_auto_stop_s=int(args.default_auto_stop * 3600),
        recovery_grace=args.recovery_grace,
        keepalive=Keepalive(
            time_s=args.keepalive_time,
            timeout_s=args.keepalive_timeout,
            min_ping_interval_s=args.keepalive_min_ping_interval,
        ),
    )
    await plane.start(args.listen)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await plane.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
