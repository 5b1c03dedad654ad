"""Start `modelfleet-gateway` (python -m control_plane.gateway.main) against a
test cluster: a key of the gateway role is minted, the gateway binds port 0
(shared by its processes) and its ready file says where it listens."""

from __future__ import annotations

import json
import sys
from typing import Any

from cluster import Cluster, Proc, wait_until


class GatewayProc:
    def __init__(self, proc: Proc, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.port: int = ready["port"]
        self.pids: list[int] = ready["pids"]
        self.metrics_ports: list[int] = ready["metrics_ports"]
        self.http_port: int = ready.get("http_port", -1)  # with --http-listen

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        return self.proc.stop()


def start_gateway(
    c: Cluster, name: str, *, processes: int = 1, token: str = "", control_plane: str = "", extra_args: tuple[str, ...] = ()
) -> GatewayProc:
    """Start gateway `name` with `processes` processes; waits until every one serves."""
    if not token and c.auth:
        token = c.create_key("gateway", name=f"gateway {name}").token
    token_file = c.root / f"{name}.gateway.key"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    ready = c.root / f"{name}.gateway.ready"
    ready.unlink(missing_ok=True)
    args = [sys.executable, "-m", "control_plane.gateway.main", "--control-plane", control_plane or c.addr, "--listen", "127.0.0.1:0",
            "--processes", str(processes), "--metrics-port", "0", "--ready-file", str(ready), *extra_args]
    if c.auth:
        args += ["--token-file", str(token_file)]
    proc = Proc(f"gateway-{name}", args, log_path=c.root / f"{name}.gateway.log")

    def read() -> dict[str, Any] | None:
        if not proc.alive():
            raise AssertionError(f"gateway {name} exited:\n{proc.log()[-3000:]}")
        return json.loads(ready.read_text()) if ready.exists() else None

    return GatewayProc(proc, wait_until(read, timeout=60, what=f"gateway {name}'s ready file"))
