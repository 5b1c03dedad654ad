"""`modelfleet-control-plane`: wires the store, registry, fleet, reconciler,
services and gateway into one grpc.aio server and runs its background loops.

Failure detection flags: --heartbeat-interval H and --node-timeout T (the
agent learns H from `welcome`), --recovery-grace (how long nodes known from
the store have to reconnect after a restart before they are lost), and the
HTTP/2 keepalive of every connection (--keepalive-*, RELIABILITY.md).

Loops (each phase wrapped so that an error is logged and the loop goes on):
- liveness sweep every min(heartbeat, 1 s) / 2: READY -> SUSPECT -> LOST;
- a reconcile tick every second (`Reconciler.tick`: auto stop, placements
  waiting for capacity; a full tick when a node's liveness changed and every
  --full-reconcile-every seconds, 30 by default);
- every 30 s the gateway closes channels to workers no longer routed to.

With --metrics-port it serves Prometheus /metrics (control_plane.api.metrics)
and writes DATA_DIR/metrics_endpoint (HOST:PORT bound).

Deployment defaults: --default-auto-stop (hours) and --max-deployments-per-user
(the quota). The wall clock that auto stop, start times and event times use is
time.time; `main(wall_clock=...)` takes another one (the tests move it forward).

Security (docs/security.md): authentication is on unless `--auth off`,
which is refused unless --listen is a loopback address. On first start with
no API key in the store the bootstrap admin key is created, written to
DATA_DIR/admin.key (mode 0600) and printed once on stdout when stdout is a
terminal (else only its path is printed). `--tls-cert` /
`--tls-key` serve TLS; `--tls-client-ca` also demands client certificates
signed by that CA (mTLS). The gateway reaches TLS workers trusting
`--worker-tls-ca`, presenting --tls-cert/--tls-key when they ask for one.

Once listening it writes DATA_DIR/endpoint (HOST:PORT actually bound, so
--listen 127.0.0.1:0 works) atomically. SIGTERM/SIGINT: health goes
NOT_SERVING, the loops stop, agent streams end (agents reconnect to
whoever serves next; no node is marked SUSPECT for it), watches and
`wait_for` waits end with UNAVAILABLE, other in-flight calls get 1 s, then
the store is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from control_plane import replicas, serving
from control_plane.api.leadership import ControlPlanesServicer
from control_plane.api.server import (
    DEFAULT_MANAGEMENT_MESSAGE_BYTES,
    Keepalive,
    build_server,
    set_serving,
)
from control_plane.api.servicers import (
    AgentControlServicer,
    AuthServicer,
    DeploymentsServicer,
    ModelRegistryServicer,
    NodesServicer,
)
from control_plane.auth import audit
from control_plane.auth.access import OpenCalls
from control_plane.auth.audit import AuditLog
from control_plane.auth.keys import KeyService
from control_plane.auth.throttle import FailureThrottle
from control_plane.deployments.service import (
    DEFAULT_MAX_DEPLOYMENTS_PER_USER,
    DeploymentService,
)
from control_plane.fleet.liveness import Fleet
from control_plane.gateway.service import Gateway, add_gateway_to_server
from control_plane.gateway.stats import GatewayStats
from control_plane.leader import Leadership, new_replica_id
from control_plane.models.blobs import BlobStore
from control_plane.models.registry import ModelRegistry
from control_plane.nodes.agents import AgentStreams, NodeService
from control_plane.reconcile.autoscaler import AUTOSCALE_INTERVAL_S, Autoscaler
from control_plane.reconcile.hub import ChangeHub
from control_plane.reconcile.reconciler import Reconciler
from control_plane.reconcile.source import StoreRouteSource
from control_plane.routefeed.feed import RoutesFeed
from control_plane.routefeed.recovering import RecoveringRouteSource
from control_plane.routefeed.reports import GatewayReports
from control_plane.routefeed.servicer import GatewaysServicer
from control_plane.store import SchemaVersionError, Store, StoreUnavailable, open_store
from control_plane.store.cached import CachedStore
from modelfleet.net import is_loopback
from modelfleet.tls import channel_credentials, server_credentials
from modelfleet.v1 import (
    agent_pb2_grpc,
    auth_pb2_grpc,
    controlplanes_pb2_grpc,
    deployments_pb2_grpc,
    gateways_pb2_grpc,
    models_pb2_grpc,
    nodes_pb2_grpc,
)

log = logging.getLogger("control_plane")

PRUNE_INTERVAL_S = 30.0


@dataclass(frozen=True)
class Security:
    """Authentication and TLS settings (paths of PEM files; "" = unset)."""

    auth: bool = True
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    worker_tls_ca: str = ""

    def worker_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.worker_tls_ca:
            return None
        return channel_credentials(self.worker_tls_ca, self.tls_cert, self.tls_key)


class ControlPlane:
    def __init__(
        self,
        *,
        data_dir: Path,
        store: Store,
        heartbeat_interval: float = 5.0,
        node_timeout: float = 30.0,
        max_message_bytes: int = 64 << 20,
        max_management_message_bytes: int = DEFAULT_MANAGEMENT_MESSAGE_BYTES,
        default_auto_stop_s: int = 0,
        max_deployments_per_user: int = DEFAULT_MAX_DEPLOYMENTS_PER_USER,
        wall_clock: Callable[[], float] = time.time,
        security: Security = Security(),
        recovery_grace: float | None = None,
        keepalive: Keepalive | None = None,
        audit_log: AuditLog | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.data_dir = data_dir
        # without a lease store (SQLite, memory) this one control plane leads
        self.leadership = leadership if leadership is not None else Leadership(store=None, replica_id=new_replica_id())
        self.audit_log = audit_log
        self.auth_throttle = FailureThrottle()
        self.store = store
        self.security = security
        self.hub = ChangeHub()
        self.fleet = Fleet(heartbeat_interval=heartbeat_interval, node_timeout=node_timeout)
        self.fleet.recover((n.info.node_id for n in store.list_nodes()), grace=recovery_grace)
        self.reconciler = Reconciler(
            store=store, fleet=self.fleet, hub=self.hub, wall_clock=wall_clock, worker_tokens=security.auth
        )
        self.autoscaler = Autoscaler(
            store=store, fleet=self.fleet, views=self.reconciler.views, events=self.reconciler.events,
            reconcile=self.reconciler.reconcile, now_ts=self.reconciler.now,
        )
        self.gateway_stats = GatewayStats()
        self.gateway_reports = GatewayReports(embedded=self.gateway_stats.get)
        self.keys = KeyService(store=store) if security.auth else None
        self.registry = ModelRegistry(
            store=store,
            blobs=BlobStore(data_dir / "blobs"),
            in_use=lambda model_id, version: self.deployments.model_in_use(model_id, version),
        )
        self.deployments = DeploymentService(
            reconciler=self.reconciler,
            hub=self.hub,
            registry=self.registry,
            default_auto_stop_s=default_auto_stop_s,
            max_deployments_per_user=max_deployments_per_user,
            gateway_stats=self.gateway_reports.deployment,
        )
        self.gateway = Gateway(
            source=StoreRouteSource(table=self.reconciler.route_table, store=store, hub=self.hub, fleet=self.fleet),
            max_message_bytes=max_message_bytes,
            stats=self.gateway_stats,
            worker_credentials=security.worker_credentials(),
        )
        self.routes_feed = RoutesFeed(
            source=RecoveringRouteSource(source=self.gateway.source, store=store, fleet=self.fleet), hub=self.hub, credentials=self.keys.credentials if self.keys is not None else None
        )
        self.open_calls = OpenCalls()
        self.server, self.health = build_server(
            max_message_bytes=max_message_bytes,
            max_management_message_bytes=max_management_message_bytes,
            authenticator=self.keys,
            keepalive=keepalive,
            open_calls=self.open_calls,
            audit=audit_log,
            throttle=self.auth_throttle,
            leadership=self.leadership if self.leadership.replicated else None,
        )
        self.nodes = NodeService(store=store, hub=self.hub, reads=self.reconciler.reads, reconcile=self.reconciler.reconcile)
        # auth off: the Auth service still answers (WhoAmI says so; keys can be made for later)
        self.auth_service = self.keys or KeyService(store=store)
        self.agent_streams = AgentStreams(agents=self.reconciler.agents, store=store, fleet=self.fleet, keys=self.keys)
        self._add_services(store)
        if self.keys is not None:
            self.keys.on_change = self._keys_changed
        self._tasks: list[asyncio.Task[None]] = []

    def _add_services(self, store: Store) -> None:
        """Every modelfleet.v1 service and the gateway, on the one server."""
        models_pb2_grpc.add_ModelRegistryServicer_to_server(ModelRegistryServicer(self.registry), self.server)
        deployments_pb2_grpc.add_DeploymentsServicer_to_server(DeploymentsServicer(self.deployments), self.server)
        nodes_pb2_grpc.add_NodesServicer_to_server(NodesServicer(self.nodes), self.server)
        agent_pb2_grpc.add_AgentControlServicer_to_server(AgentControlServicer(self.agent_streams), self.server)
        auth_pb2_grpc.add_AuthServicer_to_server(AuthServicer(self.auth_service), self.server)
        add_gateway_to_server(self.gateway, self.server)
        gateways_pb2_grpc.add_GatewaysServicer_to_server(GatewaysServicer(self.routes_feed, self.gateway_reports), self.server)
        controlplanes_pb2_grpc.add_ControlPlanesServicer_to_server(ControlPlanesServicer(self.leadership), self.server)

    def _keys_changed(self, revoked_key_id: str) -> None:
        """A key was created or revoked: agents get new verifiers; a revoked key's open calls end."""
        self.agent_streams.credentials_changed(revoked_key_id)
        self.routes_feed.refresh()  # standalone gateways get the new verifiers at once
        if revoked_key_id:
            ended = self.open_calls.end_key(revoked_key_id, f"API key {revoked_key_id} was revoked")
            if ended:
                log.warning("ended %d open streaming call(s) of revoked API key %s", ended, revoked_key_id)

    def bootstrap(self) -> str | None:
        """Create the admin key if the store has no key yet (auth on); returns its token to print."""
        return self.keys.bootstrap(self.data_dir) if self.keys is not None else None

    async def start(self, listen: str, *, lead: bool = True) -> str:
        """Listen and serve; `lead=False` (a standby) runs no reconcile or other loop."""
        sec = self.security
        try:
            if sec.tls_cert:
                port = self.server.add_secure_port(listen, server_credentials(sec.tls_cert, sec.tls_key, sec.tls_client_ca))
            else:
                port = self.server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise SystemExit(f"error: cannot listen on {listen}: {exc} (is another process using the port?)") from None
        if port == 0:
            raise SystemExit(f"error: cannot listen on {listen}")
        await self.server.start()
        host = listen.rsplit(":", 1)[0]
        endpoint = f"{host}:{port}"
        self.gateway_reports.embedded_address = endpoint
        if not self.leadership.replicated:
            self.leadership.address = endpoint
        await set_serving(self.health, True)
        if not lead:  # its endpoint file waits for the first campaign (control_plane.replicas)
            log.info("control plane listening on %s as a standby (data dir %s)", endpoint, self.data_dir)
            return endpoint
        self.publish_endpoint(endpoint)
        self.reconciler.reconcile()
        self._tasks = [
            asyncio.create_task(self._loop("liveness sweep", min(self.fleet.heartbeat_interval, 1.0) / 2, self._sweep)),
            asyncio.create_task(self._loop("reconcile", 1.0, self.reconciler.tick)),
            asyncio.create_task(self._loop("autoscale", AUTOSCALE_INTERVAL_S, self.autoscaler.step)),
            asyncio.create_task(self._prune_loop()),
            asyncio.create_task(self.routes_feed.run()),
        ]
        log.info("control plane listening on %s (data dir %s)", endpoint, self.data_dir)
        return endpoint

    def publish_endpoint(self, endpoint: str) -> None:
        """DATA_DIR/endpoint: HOST:PORT bound, written atomically."""
        tmp = self.data_dir / "endpoint.tmp"
        tmp.write_text(endpoint)
        os.replace(tmp, self.data_dir / "endpoint")

    def standby_round(self) -> None:
        """A standby's store changes under it: reread the keys, wake watches to reread their deployments."""
        if self.keys is not None:
            self.keys.reload()
        self.hub.notify_waiting()

    def _sweep(self) -> None:
        changed = self.fleet.sweep()
        if changed:
            self.reconciler.agents.on_liveness_change(changed)

    async def _loop(self, name: str, interval: float, step: object) -> None:
        while True:
            try:
                step()  # type: ignore[operator]
            except Exception:
                log.exception("%s failed; continuing", name)
            await asyncio.sleep(interval)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_S)
            try:
                await self.gateway.prune_channels()
            except Exception:
                log.exception("pruning gateway channels failed; continuing")

    async def stop(self, grace: float = 1.0, *, close_store: bool = True) -> None:
        """Shut down in order: health NOT_SERVING, loops cancelled, agent
        streams, watches and `wait_for` waits ended (UNAVAILABLE: they are
        long-lived, the grace period would only wait them out), in-flight calls given `grace` seconds, the gateway's
        channels closed, and the store closed last, once nothing can use it."""
        await set_serving(self.health, False)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.agent_streams.close_all()
        self.gateway.end_streams()
        self.hub.close()  # waits and watches end now, not after the grace period
        await self.server.stop(grace)
        await self.gateway.close()
        if self.audit_log is not None:
            self.audit_log.close()
        if close_store:
            self.store.close()


def _auto_stop_hours(text: str) -> int:
    value = text.strip().lower().removesuffix("h")
    try:
        hours = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole hours from 1 to 24, e.g. 2 or 2h") from None
    if hours == 0:
        return 0
    if hours != int(hours) or not 1 <= hours <= 24:
        raise argparse.ArgumentTypeError(f"{text!r}: auto stop must be a whole number of hours from 1 to 24")
    return int(hours)


def build_parser() -> argparse.ArgumentParser:
    """The control plane's flags (deploy/ files are checked against it)."""
    p = argparse.ArgumentParser(prog="modelfleet-control-plane", description="The modelfleet control plane.")
    p.add_argument("--listen", default=os.environ.get("MODELFLEET_LISTEN", "127.0.0.1:7070"), help="HOST:PORT (port 0 = any free port)")
    p.add_argument("--data-dir", default=os.environ.get("MODELFLEET_DATA_DIR", "./cp"), help="SQLite store, model blobs, endpoint file")
    p.add_argument("--store", default="", help="store URL (default: SQLite file in --data-dir; "
                   "postgresql://user@host:port/db; memory:// for tests)")
    p.add_argument("--store-password-file", type=Path, default=None, metavar="FILE",
                   help="the PostgreSQL password (first line of FILE); else libpq's PGPASSFILE / ~/.pgpass")
    p.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds between agent heartbeats (fractions allowed)")
    p.add_argument("--node-timeout", type=float, default=30.0, help="seconds without an agent before its node is lost")
    p.add_argument("--recovery-grace", type=float, default=None, metavar="S",
                   help="after a restart, seconds a known node has to reconnect before it is lost "
                        "(default: node timeout + 36 s, the longest agent reconnect backoff)")
    p.add_argument("--keepalive-time", type=float, default=10.0, metavar="S", help="ping idle connections every S seconds")
    p.add_argument("--keepalive-timeout", type=float, default=10.0, metavar="S", help="drop a connection whose ping is unanswered for S seconds")
    p.add_argument("--keepalive-min-ping-interval", type=float, default=5.0, metavar="S",
                   help="tolerate client pings down to S seconds apart; faster ones draw a GOAWAY after 2 strikes")
    p.add_argument("--max-message-bytes", type=int, default=64 << 20,
                   help="largest gRPC message accepted or sent: V2 inference requests through the gateway (default 64 MiB)")
    p.add_argument("--max-management-message-bytes", type=int, default=DEFAULT_MANAGEMENT_MESSAGE_BYTES,
                   help="largest request message of every other method, each message of a stream (default 4 MiB; "
                        "uploads are chunked)")
    p.add_argument("--default-auto-stop", type=_auto_stop_hours, default=0, metavar="HOURS",
                   help="auto stop of new deployments that set none: 1 to 24 whole hours (e.g. 2 or 2h); "
                        "default: none")
    p.add_argument("--max-deployments-per-user", type=int, default=DEFAULT_MAX_DEPLOYMENTS_PER_USER, metavar="N",
                   help="deployments one owner may have, stopped ones included (default %(default)s; 0 = no limit)")
    p.add_argument("--auth", choices=["on", "off"], default=os.environ.get("MODELFLEET_AUTH", "on"),
                   help="API key authentication (default on; off is refused unless --listen is loopback)")
    audit.add_flags(p)
    replicas.add_flags(p)
    p.add_argument("--tls-cert", default="", metavar="PEM", help="serve TLS with this certificate (chain)")
    p.add_argument("--tls-key", default="", metavar="PEM", help="the private key of --tls-cert")
    p.add_argument("--tls-client-ca", default="", metavar="PEM",
                   help="demand client certificates signed by this CA (mTLS; agents present theirs)")
    p.add_argument("--worker-tls-ca", default="", metavar="PEM",
                   help="the gateway reaches workers over TLS, trusting this CA (agents run them with --worker-tls-cert)")
    p.add_argument("--full-reconcile-every", type=float, default=30.0, metavar="S",
                   help="seconds between full reconcile ticks, the safety net behind event-driven ticks (default 30)")
    p.add_argument("--metrics-port", type=int, default=-1, help="serve Prometheus /metrics on this port (0 = any free "
                   "port, written to DATA_DIR/metrics_endpoint; default off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the /metrics server (default 127.0.0.1)")
    p.add_argument("--http-listen", default="", metavar="HOST:PORT",
                   help="also serve the KServe V2 REST API on HOST:PORT (port 0 = any free port; default off); "
                        "the bound address is written to DATA_DIR/http_endpoint")
    p.add_argument("--log-level", default="INFO")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.full_reconcile_every <= 0:
        p.error("--full-reconcile-every must be positive")
    if args.max_deployments_per_user < 0:
        p.error("--max-deployments-per-user must be >= 0")
    if args.max_message_bytes < 1024 or args.max_management_message_bytes < 1024:
        p.error("--max-message-bytes and --max-management-message-bytes must be at least 1024")
    if args.heartbeat_interval <= 0 or args.node_timeout <= args.heartbeat_interval:
        p.error("--node-timeout must exceed --heartbeat-interval, and both must be positive")
    if args.recovery_grace is not None and args.recovery_grace < 0:
        p.error("--recovery-grace must be >= 0")
    if min(args.keepalive_time, args.keepalive_timeout, args.keepalive_min_ping_interval) <= 0:
        p.error("--keepalive-time, --keepalive-timeout and --keepalive-min-ping-interval must be positive")
    if args.auth == "off" and not is_loopback(args.listen):
        p.error(f"--auth off is refused on a non-loopback address ({args.listen}): anyone who can reach it could "
                "control the fleet; keep authentication on, or listen on 127.0.0.1")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        p.error("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
    return args


async def _serve(args: argparse.Namespace, *, wall_clock: Callable[[], float]) -> None:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # keys' hashes and worker tokens live here
    replica_id = new_replica_id()
    try:
        opened = open_store(args.store or data_dir, password_file=args.store_password_file,
                            client_name=f"modelfleet-control-plane {replica_id}")  # fmt: skip
    except (ValueError, StoreUnavailable, SchemaVersionError) as exc:
        raise SystemExit(f"error: {exc}") from None
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    def build(store: Store, leadership: Leadership | None, *, leading: bool = True) -> ControlPlane:
        plane = _build_plane(args, data_dir=data_dir, store=store, wall_clock=wall_clock, leadership=leadership)
        if leading:  # before it listens: whoever sees the endpoint file finds the key beside it
            serving.announce_bootstrap(plane.bootstrap(), data_dir=data_dir, args=args)
        return plane

    async def lead(plane: ControlPlane) -> Callable[[], Awaitable[None]]:
        serving.serve_metrics(plane, data_dir=data_dir, args=args)
        rest = await serving.start_rest(args.http_listen, plane=plane, is_ready=lambda: not stopping.is_set())
        return rest.stop if rest is not None else _nothing

    if replicas.takes_replicas(opened):
        leadership = replicas.leadership_from_flags(args, store=opened, replica_id=replica_id)
        code = await replicas.run(leadership=leadership, listen=args.listen, advertise=args.advertise_address,
                                  build=build, lead=lead, stopping=stopping)  # fmt: skip
        if code:
            raise SystemExit(code)
        return
    plane = build(CachedStore(opened), None)  # reads from memory, writes through (store/cached.py)
    await plane.start(args.listen)
    stop_rest = await lead(plane)
    await stopping.wait()
    log.info("shutting down")
    await stop_rest()
    await plane.stop()


async def _nothing() -> None:
    return None


def _build_plane(
    args: argparse.Namespace, *, data_dir: Path, store: Store, wall_clock: Callable[[], float], leadership: Leadership | None
) -> ControlPlane:
    plane = ControlPlane(
        data_dir=data_dir,
        store=store,
        heartbeat_interval=args.heartbeat_interval,
        node_timeout=args.node_timeout,
        max_message_bytes=args.max_message_bytes,
        max_management_message_bytes=args.max_management_message_bytes,
        default_auto_stop_s=args.default_auto_stop * 3600,
        max_deployments_per_user=args.max_deployments_per_user,
        wall_clock=wall_clock,
        security=Security(
            auth=args.auth == "on",
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            worker_tls_ca=args.worker_tls_ca,
        ),
        recovery_grace=args.recovery_grace,
        keepalive=Keepalive(
            time_s=args.keepalive_time,
            timeout_s=args.keepalive_timeout,
            min_ping_interval_s=args.keepalive_min_ping_interval,
        ),
        audit_log=audit.from_flags(args, data_dir),
        leadership=leadership,
    )
    plane.reconciler.full_every = args.full_reconcile_every
    return plane


def main(argv: list[str] | None = None, *, wall_clock: Callable[[], float] = time.time) -> None:
    """Run the control plane with the flags in argv (sys.argv when None) until SIGTERM/SIGINT.

    wall_clock gives the seconds since the epoch that auto stop, start times and
    event times use."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    asyncio.run(_serve(args, wall_clock=wall_clock))


if __name__ == "__main__":
    main()
