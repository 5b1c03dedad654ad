"""`modelfleet-agent`: the per-host node agent daemon.

Design
------
Parses the flags of docs/architecture.md, detects what the host offers
(CPUs from the scheduler affinity mask and the cgroup v2 CPU quota, memory
from /proc/meminfo MemTotal and the cgroup v2 memory limit, GPUs from
``nvidia-smi -L``; each flag overrides its detection), keeps a stable node
id in ``DIR/node_id`` and runs :class:`node_agent.agent.Agent` until SIGTERM
or SIGINT. Shutdown is graceful: every allocation is reported STOPPING, its
worker drained (SIGTERM, ``--drain-timeout``, then SIGKILL), reported
STOPPED, the stream is closed, and the process exits 0.

Concurrency model
-----------------
One asyncio event loop in the main thread; signal handlers only set an
event. Detection runs once before the loop starts.

Security
--------
The agent authenticates with an API key of role ``agent``: ``--token-file``
(reread on every reconnect) or ``MODELFLEET_TOKEN``, which may be a join
token; the node's own key the control plane then issues is kept in
``DIR/node.key`` (0600) and preferred from then on. Refused for good
(UNAUTHENTICATED / PERMISSION_DENIED), the agent logs one ERROR line and
exits with ``EXIT_REFUSED`` (node_agent.exits). ``--tls-ca`` turns on
TLS to the control plane (``--tls-cert``/``--tls-key``: the client
certificate for mTLS). ``--worker-tls-cert``/``--worker-tls-key`` make the
workers serve TLS (``--worker-tls-client-ca``: mTLS); see
node_agent/worker_security.py and docs/security.md. ``--gateway-port`` also
runs ``modelfleet-gateway`` beside the agent (node_agent/gateway_child.py).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc

from modelfleet.v1 import agent_pb2, common_pb2
from node_agent.agent import KEEPALIVE_TIME, KEEPALIVE_TIMEOUT, NODE_CREDENTIAL_FILE, Agent, AgentConfig
from node_agent.allocations import gpu_devices
from node_agent.exits import EXIT_REFUSED
from node_agent.gateway_child import READY_FILE as GATEWAY_READY_FILE
from node_agent.gateway_child import GatewayChild, gateway_argv
from node_agent.supervisor import SupervisorConfig
from node_agent.worker_security import WorkerSecurity, read_pem

log = logging.getLogger("node_agent")

_NODE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")  # the control plane's id rule


def detect_cpus() -> float:
    """CPUs this process may use: the affinity mask, lowered by a cgroup v2 quota."""
    cpus = float(len(os.sched_getaffinity(0)))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cpus


def detect_memory() -> int:
    """Bytes of memory: MemTotal, lowered by a cgroup v2 memory limit."""
    total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit)) if total else int(limit)
    except (OSError, ValueError):
        pass
    return total


def detect_gpus() -> int:
    """NVIDIA GPUs listed by `nvidia-smi -L`; 0 when it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def load_node_id(data_dir: Path, override: str | None) -> str:
    """The stable node id: --node-id, else DIR/node_id, else a new `node-xxxxxxxx` (persisted)."""
    path = data_dir / "node_id"
    stored = path.read_text().strip() if path.exists() else ""
    node_id = override or stored or f"node-{uuid.uuid4().hex[:8]}"
    if node_id != stored:
        if stored:
            log.warning("node id changes from %s to %s (--node-id)", stored, node_id)
        tmp = path.with_name("node_id.tmp")
        tmp.write_text(node_id + "\n")
        os.replace(tmp, path)
    return node_id


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--label {text!r}: expected KEY=VALUE")
    return key, value


def _node_id(text: str) -> str:
    if not _NODE_ID.match(text):
        raise argparse.ArgumentTypeError(
            f"--node-id {text!r}: use 1-64 lowercase letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return text


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a number >= 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a number > 0")
    return value


def _backoff_list(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds separated by commas, e.g. 1,2,4") from None
    if any(not d >= 0 for d in delays):
        raise argparse.ArgumentTypeError(f"{text!r}: delays must be >= 0")
    return delays


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelfleet-agent", description="modelfleet node agent")
    p.add_argument("--control-plane", required=True, metavar="HOST:PORT[,HOST:PORT...]",
                   help="control plane address; several (replicas on one database): the agent follows the leader")
    p.add_argument("--data-dir", required=True, type=Path, metavar="DIR", help="node id, model cache, worker state")
    p.add_argument("--cpus", type=_non_negative_float, help="CPUs offered (default: detected)")
    p.add_argument("--memory", type=_non_negative_int, metavar="BYTES", help="memory offered (default: detected)")
    p.add_argument("--gpus", type=_non_negative_int, help="GPUs offered (default: nvidia-smi -L)")
    p.add_argument("--label", type=_label, action="append", default=[], metavar="K=V", help="node label (repeatable)")
    p.add_argument("--node-id", type=_node_id, metavar="ID", help="node id (default: DIR/node_id or a new one)")
    p.add_argument("--worker-host", default="127.0.0.1", help="address inference workers bind (default 127.0.0.1)")
    p.add_argument("--drain-timeout", type=_non_negative_float, default=30.0, metavar="S",
                   help="seconds a stopping worker may drain before SIGKILL (default 30)")  # fmt: skip
    p.add_argument("--restart-backoff", type=_backoff_list, default=(1.0, 2.0, 4.0), metavar="S,S,...",
                   help="seconds before each restart of a crashed worker; their number is the restart budget "
                        "(default 1,2,4: 3 restarts, then FAILED)")  # fmt: skip
    p.add_argument("--restart-reset-after", type=_non_negative_float, default=600.0, metavar="S",
                   help="a worker serving this long gets its full restart budget back (default 600)")  # fmt: skip
    p.add_argument("--keepalive-time", type=_positive_float, default=KEEPALIVE_TIME, metavar="S",
                   help="ping the control plane every S seconds (default 10)")  # fmt: skip
    p.add_argument("--keepalive-timeout", type=_positive_float, default=KEEPALIVE_TIMEOUT, metavar="S",
                   help="reconnect when a ping is unanswered for S seconds (default 10)")  # fmt: skip
    p.add_argument("--metrics-port", type=int, default=-1, metavar="PORT",
                   help="serve Prometheus /metrics (with every worker's) on PORT; 0 = any free port, written to "
                        "DIR/metrics_endpoint; default off")  # fmt: skip
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the /metrics server (default 127.0.0.1)")
    p.add_argument("--token-file", type=Path, metavar="PATH",
                   help="the agent's API key (role agent); default: $MODELFLEET_TOKEN")
    p.add_argument("--tls-ca", default="", metavar="PEM", help="reach the control plane over TLS, trusting this CA")
    p.add_argument("--tls-cert", default="", metavar="PEM", help="client certificate for mTLS (with --tls-key)")
    p.add_argument("--tls-key", default="", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--worker-tls-cert", default="", metavar="PEM", help="workers serve TLS with this certificate")
    p.add_argument("--worker-tls-key", default="", metavar="PEM", help="private key of --worker-tls-cert")
    p.add_argument("--worker-tls-client-ca", default="", metavar="PEM",
                   help="workers demand client certificates signed by this CA (mTLS)")
    p.add_argument("--worker-tls-ca", default="", metavar="PEM",
                   help="what the agent trusts when it calls its TLS workers (default: --tls-ca)")
    p.add_argument("--worker-max-message-bytes", type=_non_negative_int, default=0, metavar="BYTES",
                   help="largest message a worker accepts or sends (default: the worker's, 64 MiB)")
    p.add_argument("--gateway-port", type=int, default=-1, metavar="P",
                   help="also run modelfleet-gateway beside the agent on P (0 = any free port); default off")
    p.add_argument("--gateway-host", default="127.0.0.1", help="address of the gateway beside the agent")
    p.add_argument("--gateway-processes", type=int, default=1, metavar="N", help="its processes (default 1)")
    p.add_argument("--gateway-token-file", type=Path, metavar="PATH",
                   help="its key, of role gateway (default: $MODELFLEET_GATEWAY_TOKEN)")
    p.add_argument("--gateway-metrics-port", type=int, default=-1, metavar="P", help="its /metrics port (default off)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def check_security_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Paired and readable TLS files, a readable token file."""
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if bool(args.worker_tls_cert) != bool(args.worker_tls_key):
        p.error("--worker-tls-cert and --worker-tls-key go together")
    if args.worker_tls_client_ca and not args.worker_tls_cert:
        p.error("--worker-tls-client-ca (mTLS) needs --worker-tls-cert and --worker-tls-key")
    files = [args.tls_ca, args.tls_cert, args.tls_key, args.worker_tls_cert, args.worker_tls_key,
             args.worker_tls_client_ca, args.worker_tls_ca]  # fmt: skip
    if not (args.data_dir / NODE_CREDENTIAL_FILE).exists():  # the node's own key wins over --token-file
        files.append(str(args.token_file or ""))
    for path in filter(None, files):
        if not os.access(path, os.R_OK):
            p.error(f"cannot read {path}")


def channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if not args.tls_ca and not args.tls_cert:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(args.tls_ca) if args.tls_ca else None,
        private_key=read_pem(args.tls_key) if args.tls_key else None,
        certificate_chain=read_pem(args.tls_cert) if args.tls_cert else None,
    )


def node_info(args: argparse.Namespace, node_id: str) -> agent_pb2.NodeInfo:
    try:
        version = importlib.metadata.version("modelfleet")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    return agent_pb2.NodeInfo(
        node_id=node_id,
        hostname=socket.gethostname(),
        capacity=common_pb2.NodeCapacity(
            cpus=args.cpus if args.cpus is not None else detect_cpus(),
            memory_bytes=args.memory if args.memory is not None else detect_memory(),
            gpus=args.gpus if args.gpus is not None else detect_gpus(),
        ),
        labels=dict(args.label),
        agent_version=version,
    )


def write_endpoint(path: Path, endpoint: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(endpoint + "\n")
    os.replace(tmp, path)


async def serve(agent: Agent, *, metrics: tuple[str, int] | None = None, data_dir: Path | None = None,
                worker_host: str = "127.0.0.1") -> int:
    """Run agent until SIGTERM or SIGINT (or a refusal for good), then shut it down gracefully; the exit status.

    Args:
        metrics: (host, port) of the /metrics server to start, or None.
        data_dir: where metrics_endpoint is written (HOST:PORT bound).
    """
    loop = asyncio.get_running_loop()
    if metrics is not None:
        from node_agent.metrics import serve_metrics

        port = serve_metrics(agent, loop=loop, host=metrics[0], port=metrics[1], worker_host=worker_host)
        log.info("serving /metrics on %s:%d", metrics[0], port)
        if data_dir is not None:
            write_endpoint(data_dir / "metrics_endpoint", f"{metrics[0]}:{port}")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    await agent.run(stop)
    return EXIT_REFUSED if agent.refused else 0


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("received %s: shutting down gracefully", sig.name)
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_security_args(parser, args)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    data_dir: Path = args.data_dir.resolve()  # absolute: worker command lines name their ready files
    data_dir.mkdir(parents=True, exist_ok=True)
    node = node_info(args, load_node_id(data_dir, args.node_id))
    log.info(
        "node %s: %g CPUs, %d bytes memory, %d GPUs, labels %s; control plane %s",
        node.node_id, node.capacity.cpus, node.capacity.memory_bytes, node.capacity.gpus,
        dict(node.labels), args.control_plane,
    )  # fmt: skip
    security = WorkerSecurity(
        tls_cert=args.worker_tls_cert,
        tls_key=args.worker_tls_key,
        tls_client_ca=args.worker_tls_client_ca,
        tls_ca=args.worker_tls_ca or args.tls_ca,
        client_cert=args.tls_cert,
        client_key=args.tls_key,
        max_message_bytes=args.worker_max_message_bytes,
    )
    config = AgentConfig(
        control_plane=args.control_plane,
        data_dir=data_dir,
        node=node,
        supervisor=SupervisorConfig(
            data_dir=data_dir,
            worker_host=args.worker_host,
            drain_timeout=args.drain_timeout,
            restart_backoff=args.restart_backoff,
            restart_reset_after=args.restart_reset_after,
            gpu_devices=gpu_devices(node.capacity.gpus, os.environ.get("CUDA_VISIBLE_DEVICES")),
            security=security,
            worker_metrics=args.metrics_port >= 0,
        ),
        credentials=channel_credentials(args),
        token=os.environ.get("MODELFLEET_TOKEN", ""),
        token_file=args.token_file.resolve() if args.token_file else None,
        credential_file=data_dir / NODE_CREDENTIAL_FILE,
        keepalive_time=args.keepalive_time,
        keepalive_timeout=args.keepalive_timeout,
    )
    if config.token_file is None and not config.token and not (data_dir / NODE_CREDENTIAL_FILE).exists():
        log.warning("no API key (--token-file or MODELFLEET_TOKEN): a control plane with authentication on refuses this agent")
    metrics = (args.metrics_host, args.metrics_port) if args.metrics_port >= 0 else None
    (data_dir / "metrics_endpoint").unlink(missing_ok=True)
    gateway = None
    if args.gateway_port >= 0:
        gateway = GatewayChild(gateway_argv(args, data_dir), ready_file=data_dir / GATEWAY_READY_FILE)
        gateway.start()
    try:
        return asyncio.run(serve(Agent(config), metrics=metrics, data_dir=data_dir, worker_host=args.worker_host))
    finally:
        if gateway is not None:
            gateway.stop()


if __name__ == "__main__":
    sys.exit(main())
