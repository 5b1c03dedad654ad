"""OS-process and health-probe primitives for worker supervision (no policy here).

Design
------
The supervisor handles two kinds of worker processes: its own children,
which asyncio's child watcher reaps (so ``Process.wait()`` yields the exit
status and no zombie is left), and workers adopted from a previous agent,
which are not our children: their exit can only be observed by polling, and
a zombie of theirs (waiting for init to reap it) counts as gone.
:class:`WorkerProcess` hides the difference. Health is the standard
``grpc.health.v1`` Check of the whole server (service ""), and its Watch
stream tells the moment a worker starts draining.

Concurrency model
-----------------
Called from the agent's asyncio loop only; the functions here never block
for long (signals, /proc reads) and the awaitables poll with short sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def connect_address(host: str, port: int) -> str:
    """Address the agent itself uses to reach a worker bound on host:port."""
    return f"127.0.0.1:{port}" if host in _WILDCARD_HOSTS else f"{host}:{port}"


def advertised_address(host: str, port: int) -> str:
    """Address reported to the control plane (what the gateway dials)."""
    return f"{socket.getfqdn()}:{port}" if host in _WILDCARD_HOSTS else f"{host}:{port}"


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (zombies of orphans wait for init)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    """The argv of pid ([] when unknown)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def workers_under(directory: Path) -> dict[int, Path]:
    """Live worker processes whose --ready-file lies in `directory`: pid -> that ready file.
    (Found through /proc; empty where there is none.)"""
    found: dict[int, Path] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        argv = cmdline(int(entry.name))
        if "--ready-file" not in argv[:-1] or not pid_alive(int(entry.name)):
            continue
        ready = Path(argv[argv.index("--ready-file") + 1])
        if ready.parent == directory:
            found[int(entry.name)] = ready
    return found


def kill(pid: int, sig: signal.Signals, *, group: bool) -> None:
    """Send sig to pid, or to its process group (a worker leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


class WorkerProcess:
    """A worker process: our child (reaped by asyncio) or an adopted orphan (polled)."""

    def __init__(self, pid: int, child: asyncio.subprocess.Process | None = None, *, poll: float = 0.2) -> None:
        self.pid = pid
        self._child = child
        self._poll = poll

    def alive(self) -> bool:
        return self._child.returncode is None if self._child is not None else pid_alive(self.pid)

    async def wait(self) -> int | None:
        """Exit status (negative = signal); None when unknown (an adopted process)."""
        if self._child is not None:
            return await self._child.wait()
        while pid_alive(self.pid):
            await asyncio.sleep(self._poll)
        return None

    def signal(self, sig: signal.Signals, *, group: bool = False) -> None:
        if self.alive():
            kill(self.pid, sig, group=group)


async def check_health(channel: grpc.aio.Channel, *, timeout: float) -> str | None:
    """One grpc.health.v1 Check of the whole server: None if SERVING, else why not."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"health status {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


async def probe_health(
    address: str, *, timeout: float, channel: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel
) -> str | None:
    """check_health over a throwaway channel (made by `channel`: plaintext or TLS)."""
    async with channel(address) as opened:
        return await check_health(opened, timeout=timeout)


async def wait_not_serving(channel: grpc.aio.Channel) -> bool:
    """Watch the whole server's health; True once it reports NOT_SERVING (a
    worker does the moment it starts to drain). False when the stream ends
    first (the worker went away, or it does not serve Watch)."""
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    try:
        async for reply in call:
            if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                return True
    except grpc.aio.AioRpcError:
        return False
    finally:
        call.cancel()
    return False
