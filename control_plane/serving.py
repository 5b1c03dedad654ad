"""What the leading control plane serves besides its gRPC server, and what
it says at start: the bootstrap admin key's announcement, Prometheus
/metrics (--metrics-port; its address in DATA_DIR/metrics_endpoint) and
REST (--http-listen; DATA_DIR/http_endpoint). A standby replica runs none
of them (control_plane.replicas)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from control_plane.auth.keys import ADMIN_KEY_FILE
from control_plane.rest.api_v1 import Services
from control_plane.rest.server import RestServer, build_app, product_version
from control_plane.rest.sse import Streams

if TYPE_CHECKING:
    from control_plane.main import ControlPlane

log = logging.getLogger("control_plane")


def announce_bootstrap(token: str | None, *, data_dir: Path, args: argparse.Namespace) -> None:
    """Say where the new bootstrap admin key is. Shown once on a terminal (never logged);
    stdout that is not a terminal (a journal, a log file) would keep it, so only its path."""
    if token is not None:
        key_file = data_dir / ADMIN_KEY_FILE
        if sys.stdout.isatty():
            print(f"modelfleet: created the bootstrap admin API key; it is saved in {key_file} "
                  f"(mode 0600) and shown only this once:\n  {token}", flush=True)
        else:
            print(f"modelfleet: created the bootstrap admin API key in {key_file} (mode 0600); "
                  "it is not printed because stdout is not a terminal", flush=True)
    elif args.auth == "off":
        log.warning("authentication is OFF: every caller on %s may do anything", args.listen)


def serve_metrics(plane: ControlPlane, *, data_dir: Path, args: argparse.Namespace) -> None:
    """/metrics when --metrics-port asks for it; its bound address goes to DATA_DIR/metrics_endpoint."""
    (data_dir / "metrics_endpoint").unlink(missing_ok=True)
    if args.metrics_port < 0:
        return
    from control_plane.api.metrics import serve_metrics as serve_prometheus

    port = serve_prometheus(
        store=plane.store, fleet=plane.fleet, reconciler=plane.reconciler, gateway=plane.gateway, loop=asyncio.get_running_loop(),
        host=args.metrics_host, port=args.metrics_port, auth_throttle=plane.auth_throttle,
    )  # fmt: skip
    tmp = data_dir / "metrics_endpoint.tmp"
    tmp.write_text(f"{args.metrics_host}:{port}")
    os.replace(tmp, data_dir / "metrics_endpoint")
    log.info("serving /metrics on %s:%d", args.metrics_host, port)


async def start_rest(listen: str, *, plane: ControlPlane, is_ready: Callable[[], bool]) -> RestServer | None:
    """Serve REST on --http-listen (if given) and publish the bound address in DATA_DIR/http_endpoint."""
    data_dir = plane.data_dir
    (data_dir / "http_endpoint").unlink(missing_ok=True)
    if not listen:
        return None
    services = Services(deployments=plane.deployments, registry=plane.registry, nodes=plane.nodes,
                        keys=plane.auth_service, hub=plane.hub, streams=Streams(), open_calls=plane.open_calls, audit=plane.audit_log)
    app = build_app(gateway=plane.gateway, authenticator=plane.keys, version=product_version(), is_ready=is_ready,
                    services=services)
    rest = RestServer(app)
    endpoint = await rest.start(listen)
    tmp = data_dir / "http_endpoint.tmp"
    tmp.write_text(endpoint)
    os.replace(tmp, data_dir / "http_endpoint")
    log.info("serving REST on http://%s; the console on http://%s/console/", endpoint, endpoint)
    return rest
