"""The gateway beside the agent (`modelfleet-agent --gateway-port P`), so that
every host is an entry point for inference.

The agent starts `modelfleet-gateway` (`python -m control_plane.gateway.main`)
as a child process rather than running it in-process: node_agent and
control_plane never import each other (a process boundary, as with the
model probe), and the gateway keeps its own event loop and cores instead of
competing with the agent's stream. The child follows the same control plane
with a key of the `gateway` role (`--gateway-token-file`, else
`$MODELFLEET_GATEWAY_TOKEN`), trusts `--tls-ca` to reach it and
`--worker-tls-ca` to reach TLS workers, and writes DATA_DIR/gateway.ready
(`{"port", "pids", "metrics_ports"}`). It is stopped (SIGTERM) when the
agent shuts down; if it dies the agent logs it and goes on.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

READY_FILE = "gateway.ready"


def gateway_argv(args: argparse.Namespace, data_dir: Path) -> list[str]:
    """The command line of the gateway beside this agent."""
    argv = [
        sys.executable, "-m", "control_plane.gateway.main", "--control-plane", args.control_plane,
        "--listen", f"{args.gateway_host}:{args.gateway_port}", "--processes", str(args.gateway_processes),
        "--ready-file", str(data_dir / READY_FILE), "--metrics-port", str(args.gateway_metrics_port),
    ]  # fmt: skip
    if args.gateway_token_file:
        argv += ["--token-file", str(args.gateway_token_file)]
    if args.tls_ca:
        argv += ["--tls-ca", args.tls_ca]
    worker_ca = args.worker_tls_ca or args.tls_ca
    if worker_ca and args.worker_tls_cert:
        argv += ["--worker-tls-ca", worker_ca]
    return argv


class GatewayChild:
    """The gateway process beside the agent."""

    def __init__(self, argv: list[str], *, ready_file: Path) -> None:
        self._argv = argv
        self._ready = ready_file
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._ready.unlink(missing_ok=True)
        env = dict(os.environ)
        if "MODELFLEET_GATEWAY_TOKEN" in env:
            env["MODELFLEET_TOKEN"] = env["MODELFLEET_GATEWAY_TOKEN"]
        else:
            env.pop("MODELFLEET_TOKEN", None)  # the agent's own key lacks the gateway role
        self.popen = subprocess.Popen(self._argv, env=env)
        log.info("started the gateway beside this agent (pid %d)", self.popen.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the gateway (pid %d) did not stop within %g s: killed", self.popen.pid, timeout)
            self.popen.kill()
            self.popen.wait(5)
