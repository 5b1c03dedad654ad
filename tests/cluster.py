"""Real processes for integration tests: a control plane and node agents on
127.0.0.1, each with its own data dir and log file under the test's tmp dir.

Ports are never fixed: the control plane binds 127.0.0.1:0 and writes the
port it got to DATA_DIR/endpoint, which is read back here. Nothing sleeps to
wait for a state: `wait_until` polls a predicate with a deadline. Timings are
shrunk (heartbeat 0.2 s, node timeout 1 s) as RELIABILITY.md prescribes.

Authentication is on, as in production: the cluster reads the bootstrap
admin key from DATA_DIR/admin.key, its channel sends it on every call
(`self.token`; `authed_channel` for other addresses, workers included), and
every agent joins with its own key of role `agent`, minted on first start
and kept in the agent's data dir (`agent.key`) so a restarted agent reuses it.
`Cluster(auth=False)` runs the control plane with `--auth off`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from modelfleet.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    deployments_pb2,
    deployments_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    nodes_pb2,
    nodes_pb2_grpc,
)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):  # fmt: skip
    """Adds `authorization: Bearer <token>` (or another header) to every call of a channel."""

    def __init__(self, token: str, *, header: tuple[str, str] | None = None) -> None:
        self._pair = header or ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self._pair])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    intercept_unary_stream = intercept_unary_unary
    intercept_stream_unary = intercept_unary_unary
    intercept_stream_stream = intercept_unary_unary


def authed_channel(address: str, token: str, *, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A channel that sends token on every call ("" = none), over TLS when credentials are given."""
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    return grpc.intercept_channel(channel, _Metadata(token)) if token else channel


def wait_until(predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def worker_processes(root: Path | None = None) -> dict[int, tuple[str, str]]:
    """Live inference workers, from /proc: pid -> (deployment id, allocation id),
    only those whose ready file lies under `root` when given."""
    found: dict[int, tuple[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if b"node_agent.worker" not in args or b"--ready-file" not in args or status in ("Z", "X"):
            continue
        ready = Path(args[args.index(b"--ready-file") + 1].decode())
        if root is not None and not ready.is_relative_to(root):
            continue
        name = args[args.index(b"--name") + 1].decode() if b"--name" in args else ""
        found[int(entry.name)] = (name, ready.stem)
    return found


def kill_orphan_workers(root: Path) -> list[int]:
    """SIGKILL every worker process group whose ready file lies under root."""
    pids = sorted(worker_processes(root))
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if pids:
        wait_until(lambda: not worker_processes(root), timeout=10, what="orphan workers to die")
    return pids


class Proc:
    """One child process with its output in a log file."""

    def __init__(self, name: str, args: list[str], *, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(5)
        self._log.close()


class Cluster:
    def __init__(
        self,
        root: Path,
        *,
        heartbeat: float = 0.2,
        node_timeout: float = 1.0,
        auth: bool = True,
        credentials: grpc.ChannelCredentials | None = None,
        recovery_grace: float = 10.0,
        cp_args: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.recovery_grace = recovery_grace  # after a control-plane restart, time for agents to reconnect
        self.cp_args = list(cp_args)  # extra flags of every control-plane start
        self.credentials = credentials  # TLS for the test's own channel (the control plane runs with --tls-*)
        self.heartbeat = heartbeat
        self.node_timeout = node_timeout
        self.auth = auth
        self.cp: Proc | None = None
        self.addr = ""
        self.token = ""  # the bootstrap admin key ("" with auth off)
        self.agents: dict[str, Proc] = {}
        self.channel: grpc.Channel | None = None

    # ---- processes ------------------------------------------------------------------
    def start_control_plane(
        self, listen: str = "127.0.0.1:0", *, extra_args: Sequence[str] = (), launcher: Sequence[str] = ("-m", "control_plane.main")
    ) -> str:
        """Start the control plane (`python LAUNCHER... FLAGS`) and wait for its endpoint file."""
        data = self.root / "cp"
        data.mkdir(parents=True, exist_ok=True)
        endpoint = data / "endpoint"
        endpoint.unlink(missing_ok=True)
        self.cp = Proc(
            "control-plane",
            [sys.executable, *launcher, "--listen", listen, "--data-dir", str(data),
             "--heartbeat-interval", str(self.heartbeat), "--node-timeout", str(self.node_timeout),
             "--recovery-grace", str(self.recovery_grace),
             *([] if self.auth else ["--auth", "off"]), *self.cp_args, *extra_args],
            log_path=self.root / "cp.log",
        )
        previous, previous_token = self.addr, self.token
        self.addr = wait_until(lambda: self._read_endpoint(endpoint), timeout=30, what="the control plane's endpoint file")
        self.token = (data / "admin.key").read_text().strip() if self.auth else ""
        # a channel reconnects to the same address by itself: threads of a test may be using it
        if self.channel is None or (self.addr, self.token) != (previous, previous_token):
            if self.channel is not None:
                self.channel.close()
            self.channel = authed_channel(self.addr, self.token, credentials=self.credentials)
        return self.addr

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The admin key as call metadata, for channels the test opens itself."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def create_key(self, *roles: str, **fields: Any) -> auth_pb2.CreateApiKeyResponse:
        """A new API key with roles (fields: user, privileges, name, ttl, node_id), made by the admin key."""
        return auth_pb2_grpc.AuthStub(self.channel).CreateApiKey(auth_pb2.CreateApiKeyRequest(roles=roles, **fields))

    def user_channel(self, user: str) -> grpc.Channel:
        """A channel acting as `user`: a deployer key of that user (auth on), or the
        x-modelfleet-user metadata (auth off). Kept open until close()."""
        channels: dict[str, grpc.Channel] = self.__dict__.setdefault("_user_channels", {})
        if user not in channels:
            if self.auth:
                channels[user] = authed_channel(self.addr, self.create_key("deployer", user=user).token, credentials=self.credentials)
            else:
                channel = grpc.insecure_channel(self.addr)
                channels[user] = grpc.intercept_channel(channel, _Metadata("", header=("x-modelfleet-user", user)))
        return channels[user]

    def agent_token_file(self, name: str) -> Path:
        """DIR/<name>/agent.key: the agent's own key (role agent), minted once."""
        path = self.root / name / "agent.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.create_key("agent", name=f"agent {name}").token + "\n")
            path.chmod(0o600)
        return path

    def rest_endpoint(self, timeout: float = 30.0) -> str:
        """HOST:PORT of the control plane's REST (started with --http-listen), once it serves."""
        path = self.root / "cp" / "http_endpoint"
        return wait_until(lambda: self._read_endpoint(path), timeout=timeout, what="the control plane's http_endpoint file")

    def _read_endpoint(self, path: Path) -> str:
        assert self.cp is not None
        if not self.cp.alive():
            raise AssertionError(f"control plane exited:\n{self.cp.log()[-3000:]}")
        return path.read_text().strip() if path.exists() else ""

    def start_agent(
        self,
        name: str,
        *,
        cpus: int = 4,
        labels: dict[str, str] | None = None,
        gpus: int | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        control_plane: str = "",
    ) -> Proc:
        """Start (or restart: the same data dir, so the same node id and key) agent `name`;
        `prefix` goes before the command (tests/netns.py: `ip netns exec NS`), and
        `control_plane` replaces the address the agent dials."""
        args = [*prefix, sys.executable, "-m", "node_agent.main", "--control-plane", control_plane or self.addr,
                "--data-dir", str(self.root / name), "--cpus", str(cpus), "--drain-timeout", "5", *extra_args]
        if gpus is not None:
            args += ["--gpus", str(gpus)]
        if self.auth:
            args += ["--token-file", str(self.agent_token_file(name))]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        proc = Proc(name, args, log_path=self.root / f"{name}.log", env=env)
        self.agents[name] = proc
        return proc

    def node_id(self, name: str) -> str:
        path = self.root / name / "node_id"
        return wait_until(lambda: path.exists() and path.read_text().strip(), timeout=30, what=f"{name}'s node id")

    def close(self) -> list[int]:
        """Stop agents, then the control plane; kill any worker still running
        from this cluster's data dirs (agents killed by a test leave theirs).
        Returns the pids of the orphans it had to kill."""
        for channel in self.__dict__.get("_user_channels", {}).values():
            channel.close()
        for proc in self.agents.values():
            proc.stop()
        if self.cp is not None:
            self.cp.stop()
        if self.channel is not None:
            self.channel.close()
        return kill_orphan_workers(self.root)

    # ---- clients ----------------------------------------------------------------------
    @property
    def models(self) -> models_pb2_grpc.ModelRegistryStub:
        return models_pb2_grpc.ModelRegistryStub(self.channel)

    @property
    def deployments(self) -> deployments_pb2_grpc.DeploymentsStub:
        return deployments_pb2_grpc.DeploymentsStub(self.channel)

    @property
    def nodes(self) -> nodes_pb2_grpc.NodesStub:
        return nodes_pb2_grpc.NodesStub(self.channel)

    def wait_nodes(self, count: int, timeout: float = 30.0) -> list[nodes_pb2.Node]:
        def ready() -> list[nodes_pb2.Node]:
            nodes = [n for n in self.nodes.ListNodes(nodes_pb2.ListNodesRequest()).nodes if n.state == nodes_pb2.NODE_STATE_READY]
            return nodes if len(nodes) >= count else []

        return wait_until(ready, timeout=timeout, what=f"{count} READY nodes")

    def upload(self, path: Path, model_id: str, *, fmt: int = common_pb2.MODEL_FORMAT_ONNX, chunk: int = 64 << 10) -> models_pb2.Model:
        # TorchScript records no specs: tests' TorchScript models take one FP32 `x` of N rows of 4.
        inputs = [common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 4])] if fmt == common_pb2.MODEL_FORMAT_TORCHSCRIPT else []

        def requests() -> Iterator[models_pb2.UploadModelRequest]:
            yield models_pb2.UploadModelRequest(
                metadata=models_pb2.UploadModelMetadata(model_id=model_id, format=fmt, inputs=inputs)
            )
            data = path.read_bytes()
            for i in range(0, len(data), chunk):
                yield models_pb2.UploadModelRequest(chunk=data[i : i + chunk])

        return self.models.UploadModel(requests(), timeout=120)

    def get(self, deployment_id: str) -> deployments_pb2.Deployment:
        return self.deployments.GetDeployment(deployments_pb2.GetDeploymentRequest(deployment_id=deployment_id))

    def routes(self, deployment_id: str) -> dict[str, int]:
        """node_id -> routing state of the deployment's first variant."""
        table = self.get(deployment_id).allocations[0].routing_table
        return {node: entry.routing_state for node, entry in table.items()}
