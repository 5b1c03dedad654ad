"""`modelfleet-gateway --processes N`: N gateway processes on one port.

With N = 1 the gateway serves in this process. Otherwise this process is a
supervisor: it settles the port first (with port 0 it binds a SO_REUSEPORT
socket to port 0 and keeps it, bound but not listening, until every child
listens, so no other program takes the port meanwhile), starts N children
(`python -m control_plane.gateway.main` with the same flags, `--processes
1` and that port; each binds it with grpc.so_reuseport, and the kernel
spreads connections over them; a --http-listen port alike), waits until
each wrote its ready file, then writes `--ready-file`. SIGTERM/SIGINT is passed on to the children;
when one child exits by itself the others are stopped and the supervisor
exits 1, for systemd or Kubernetes to restart the whole set. A child whose
supervisor is gone (SIGKILL) stops within a second (control_plane.gateway.main).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

CHILD_READY_ENV = "MODELFLEET_GATEWAY_CHILD_READY"
START_TIMEOUT_S = 120.0

Serve = Callable[..., Coroutine[Any, Any, None]]


def _write_json(path: str, data: object) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_text(json.dumps(data))
    os.replace(tmp, path)


def run_processes(args: argparse.Namespace, *, serve: Serve) -> None:
    child_ready = os.environ.get(CHILD_READY_ENV, "")
    if child_ready or args.processes == 1:
        def on_ready(info: dict[str, Any]) -> None:
            if child_ready:
                _write_json(child_ready, info)
            elif args.ready_file:
                _write_json(args.ready_file, {"port": info["port"], "http_port": info["http_port"], "pids": [info["pid"]],
                                              "metrics_ports": [info["metrics_port"]]})

        asyncio.run(serve(args, on_ready=on_ready))
        return
    sys.exit(_supervise(args))


def _reserve(host: str, port: int) -> tuple[int, socket.socket | None]:
    if port:
        return port, None
    bare = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((bare, 0))
    return int(sock.getsockname()[1]), sock


def _child_argv(args: argparse.Namespace, *, host: str, port: int, index: int, http: str) -> list[str]:
    metrics = args.metrics_port + index if args.metrics_port > 0 else args.metrics_port
    return [
        sys.executable, "-m", "control_plane.gateway.main", *args.argv,
        "--listen", f"{host}:{port}", "--processes", "1", "--metrics-port", str(metrics), "--ready-file", "",
        "--http-listen", http,
    ]  # fmt: skip


def _supervise(args: argparse.Namespace) -> int:
    host, _, text = args.listen.rpartition(":")
    port, reserved = _reserve(host, int(text))
    http_host, _, http_text = args.http_listen.rpartition(":")
    http_port, http_reserved = _reserve(http_host, int(http_text)) if args.http_listen else (-1, None)
    http = f"{http_host}:{http_port}" if args.http_listen else ""
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int = signal.SIGTERM, frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with tempfile.TemporaryDirectory(prefix="modelfleet-gateway-") as tmp:
        ready_files = [os.path.join(tmp, f"child-{i}.json") for i in range(args.processes)]
        for i, ready in enumerate(ready_files):
            env = {**os.environ, CHILD_READY_ENV: ready}
            children.append(subprocess.Popen(_child_argv(args, host=host, port=port, index=i, http=http), env=env))
        infos = _await_ready(children, ready_files, stopping=lambda: stopping)
        for sock in (reserved, http_reserved):
            if sock is not None:
                sock.close()
        if infos is None:
            stop()
        elif args.ready_file:
            _write_json(args.ready_file, {"port": port, "http_port": http_port, "pids": [c.pid for c in children],
                                          "metrics_ports": [i["metrics_port"] for i in infos]})
        return _wait_children(children, stop=stop, stopping=lambda: stopping)


def _await_ready(
    children: list[subprocess.Popen[bytes]], ready_files: list[str], *, stopping: Callable[[], bool]
) -> list[dict[str, Any]] | None:
    """Each child's ready info once all are up; None if one exited first, a signal came or time ran out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and not stopping():
        if any(c.poll() is not None for c in children):
            return None
        if all(os.path.exists(f) for f in ready_files):
            return [json.loads(Path(f).read_text()) for f in ready_files]
        time.sleep(0.05)  # a supervisor's poll of its children's ready files
    return None


def _wait_children(children: list[subprocess.Popen[bytes]], *, stop: Callable[[], None], stopping: Callable[[], bool]) -> int:
    """Wait until every child exited; the first to exit by itself stops the rest (exit status 1)."""
    failed = False
    remaining = {c.pid: c for c in children}
    while remaining:
        try:
            pid, _status = os.wait()
        except ChildProcessError:
            break
        child = remaining.pop(pid, None)
        if child is not None and not stopping():
            failed = True
            print(f"modelfleet-gateway: process {pid} exited; stopping the others", file=sys.stderr)
            stop()
    return 1 if failed else 0
