"""`modelfleet up`: a whole fleet on one machine, with a demo deployment.

Steps: take a lock on the data dir; start the control plane
(`python -m control_plane.main --listen L --data-dir DIR/control-plane`);
wait for it to write `DIR/control-plane/endpoint` (HOST:PORT it bound — the
contract with the control plane, so `--listen 127.0.0.1:0` works) and, with
REST on (`--http-listen`, a free port by default), `DIR/control-plane/http_endpoint`; with
authentication on (the default) read the bootstrap admin key it wrote to
`DIR/control-plane/admin.key` and give each agent its own key of role
`agent`, kept in `DIR/control-plane/agent-keys/node-<i>.key` (0600; minted
once, by running `modelfleet keys create` as a child process, so this
process opens no gRPC channel before its children start); start N agents
(`python -m node_agent.main --control-plane HOST:PORT --data-dir
DIR/node-<i> --token-file ...`, i = 1..N); wait until ListNodes shows N
READY nodes (calling with the admin key); then,
unless --no-demo, build the demo ONNX model, upload it (reused when the
newest `demo` version has the same sha256), start deployment `demo` (or wait
for an existing one), print its allocation, run one inference and check it
against numpy. Then it serves until Ctrl-C or SIGTERM and stops agents
before the control plane. Child output goes to DIR/logs/<name>.log.

Every child is started before the first gRPC channel opens, so no fork
happens while gRPC threads run.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

import grpc
import numpy as np

from modelfleet import demo
from modelfleet.cli import render
from modelfleet.cli.client import Client, format_rpc_error, with_default_port
from modelfleet.cli.cmd_deployments import reached
from modelfleet.cli.cmd_infer import infer
from modelfleet.cli.cmd_models import file_digest, upload_file
from modelfleet.cli.errors import CliError
from modelfleet.cli.parsing import arg_type, parse_duration, positive_int
from modelfleet.cli.specflags import duration
from modelfleet.cli.supervisor import Child, ChildDied, check_alive, stop_group, wait_for_file
from modelfleet.cli.tensors import to_list
from modelfleet.v1 import common_pb2, deployments_pb2, models_pb2, nodes_pb2

ENDPOINT_FILE = "endpoint"
HTTP_ENDPOINT_FILE = "http_endpoint"
_WILDCARDS = {"0.0.0.0", "::", "[::]", ""}


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (raised from the signal handler in the main thread).

    A KeyboardInterrupt, so every place that handles Ctrl-C (the shutdown
    wait included) treats SIGTERM the same way.
    """


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="run a control plane and local agents with a demo deployment", parents=parents)
    p.add_argument("--data-dir", type=Path, default=Path(".modelfleet"), help="default ./.modelfleet")
    p.add_argument("--listen", default="127.0.0.1:7070", type=with_default_port,
                   help="control plane HOST[:PORT] (port default 7070); 127.0.0.1:0 picks a free port")
    p.add_argument("--http-listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="the control plane's REST (KServe V2, the Elasticsearch API shape) and the web console; default a free port on "
                        "127.0.0.1, written to DATA_DIR/control-plane/http_endpoint; '' = no REST")
    p.add_argument("--agents", type=arg_type(positive_int, "count"), default=1, help="local node agents (default 1)")
    p.add_argument("--no-demo", action="store_true", help="do not upload and deploy the demo model")
    p.add_argument("--auth", choices=["on", "off"], default="on",
                   help="API keys (default on: the admin key is in DATA_DIR/control-plane/admin.key)")
    p.add_argument("--start-timeout", type=arg_type(parse_duration, "duration"), default=120.0, metavar="DURATION",
                   help="limit of each startup step (default 2m)")
    p.add_argument("--shutdown-timeout", type=arg_type(parse_duration, "duration"), default=30.0, metavar="DURATION",
                   help="grace period per process group on shutdown before SIGKILL (default 30s)")
    p.set_defaults(func=up_command)


def parse_endpoint(text: str) -> str:
    """Validate the endpoint file's `HOST:PORT` and return it stripped."""
    value = text.strip()
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint file holds {value!r}, not HOST:PORT")
    return value


def client_address(endpoint: str) -> str:
    """The address to dial for a bound endpoint (a wildcard host becomes 127.0.0.1)."""
    host, _, port = endpoint.rpartition(":")
    return f"127.0.0.1:{port}" if host in _WILDCARDS else endpoint


def say(text: str = "") -> None:
    print(text, flush=True)


Minter = Callable[[str, str, str], str]


def mint_agent_key(addr: str, admin_token: str, name: str) -> str:
    """A new API key of role agent, made by `modelfleet keys create` in a child process."""
    argv = [sys.executable, "-m", "modelfleet.cli.main", "--addr", addr, "keys", "create", "--role", "agent",
            "--name", f"modelfleet up {name}", "--token-only"]  # fmt: skip
    env = dict(os.environ, MODELFLEET_TOKEN=admin_token)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise CliError(f"cannot create the API key of agent {name}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class LocalFleet:
    """The control plane and agents of one `up` run (see the module docstring)."""

    def __init__(self, data_dir: Path, *, listen: str, agents: int, start_timeout: float,
                 shutdown_timeout: float, auth: bool = True, mint: Minter = mint_agent_key, http_listen: str = "") -> None:
        self.data_dir = data_dir
        self.listen = listen
        self.http_listen = http_listen
        self.rest = ""  # http://HOST:PORT of the control plane's REST and console ("" = off)
        self.auth = auth
        self.mint = mint
        self.token = ""  # the admin key (auth on)
        self.n_agents = agents
        self.start_timeout = start_timeout
        self.shutdown_timeout = shutdown_timeout
        self.logs = data_dir / "logs"
        self.control_plane: Child | None = None
        self.agents: list[Child] = []
        self.addr = ""
        self._lock: IO[str] | None = None

    @property
    def children(self) -> list[Child]:
        return ([self.control_plane] if self.control_plane else []) + self.agents

    def lock(self) -> None:
        """Refuse a second `up` on the same data dir."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = (self.data_dir / "up.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise CliError(f"another `modelfleet up` (pid {holder}) is using {self.data_dir}") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def start(self, cp_argv: list[str] | None = None, agent_argv: list[str] | None = None) -> None:
        """Start the control plane, learn its address, start the agents.

        `cp_argv`/`agent_argv` replace the interpreter-and-module prefix (tests).
        """
        cp_dir = self.data_dir / "control-plane"
        cp_dir.mkdir(parents=True, exist_ok=True)
        endpoint = cp_dir / ENDPOINT_FILE
        endpoint.unlink(missing_ok=True)  # a stale one names the previous run's port
        (cp_dir / HTTP_ENDPOINT_FILE).unlink(missing_ok=True)
        rest_args = ["--http-listen", self.http_listen] if self.http_listen else []
        self.control_plane = Child(
            "control-plane",
            (cp_argv or [sys.executable, "-m", "control_plane.main"])
            + ["--listen", self.listen, "--data-dir", str(cp_dir), *([] if self.auth else ["--auth", "off"]), *rest_args],
            self.logs / "control-plane.log",
        )
        say(f"starting the control plane (--listen {self.listen}) ...")
        self.control_plane.start()
        bound = wait_for_file(endpoint, timeout=self.start_timeout, watch=[self.control_plane], parse=parse_endpoint)
        self.addr = client_address(bound)
        say(f"control plane listening on {bound} (pid {self.control_plane.pid})")
        if self.http_listen:
            http = wait_for_file(cp_dir / HTTP_ENDPOINT_FILE, timeout=self.start_timeout, watch=[self.control_plane],
                                 parse=parse_endpoint)
            self.rest = f"http://{client_address(http)}"
            say(f"REST: {self.rest}")
            say(f"Console: {self.rest}/console/ (sign in with the admin key)")
        if self.auth:
            try:
                self.token = (cp_dir / "admin.key").read_text().strip()
            except OSError as exc:
                raise CliError(f"authentication is on but the admin key {cp_dir / 'admin.key'} cannot be read "
                               f"({exc.strerror}); it is written on the first start only") from None
            say(f"admin API key: {cp_dir / 'admin.key'} (the CLI uses it for a control plane on this machine)")
        for i in range(1, self.n_agents + 1):
            name = f"node-{i}"
            (self.data_dir / name).mkdir(parents=True, exist_ok=True)
            token_args: list[str] = []
            if self.auth:
                key_file = cp_dir / "agent-keys" / f"{name}.key"
                if not key_file.exists():
                    _write_private(key_file, self.mint(self.addr, self.token, name) + "\n")
                token_args = ["--token-file", str(key_file)]
            child = Child(
                name,
                (agent_argv or [sys.executable, "-m", "node_agent.main"])
                + ["--control-plane", self.addr, "--data-dir", str(self.data_dir / name), *token_args],
                self.logs / f"{name}.log",
            )
            child.start()
            self.agents.append(child)
        if self.n_agents:
            say(f"started {self.n_agents} agent(s): " + ", ".join(f"{c.name} (pid {c.pid})" for c in self.agents))

    def wait_nodes_ready(self, client: Client) -> list[nodes_pb2.Node]:
        """Poll ListNodes until the agents' nodes are READY."""
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        while True:
            check_alive(self.children)
            try:
                nodes = list(client.nodes.ListNodes(nodes_pb2.ListNodesRequest(), timeout=5).nodes)
                ready = [n for n in nodes if n.state == nodes_pb2.NODE_STATE_READY]
                if len(ready) >= self.n_agents:
                    return ready
                last = f"{len(ready)} of {self.n_agents} nodes ready"
            except grpc.RpcError as err:
                last = format_rpc_error(err, self.addr).removeprefix("error: ")
            if time.monotonic() >= deadline:
                raise CliError(f"the agents did not become ready within {self.start_timeout:g}s: {last}")
            time.sleep(0.2)

    def serve(self) -> None:
        """Block until a signal (KeyboardInterrupt/Terminated) or a child's death (ChildDied)."""
        while True:
            check_alive(self.children)
            time.sleep(0.5)

    def shutdown(self) -> None:
        """Agents first, then the control plane; each SIGTERM, grace, SIGKILL."""
        if any(c.running for c in self.children):
            say("stopping ...")
        stop_group(self.agents, self.shutdown_timeout, say=say)
        if self.control_plane is not None:
            stop_group([self.control_plane], self.shutdown_timeout, say=say)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def ensure_demo_model(client: Client, data_dir: Path) -> models_pb2.Model:
    """Build the demo model; upload it unless the newest `demo` has the same bytes."""
    path = demo.build_demo_model(data_dir / "demo" / "demo.onnx")
    sha256, _ = file_digest(path)
    try:
        current: models_pb2.Model = client.models.GetModel(
            models_pb2.GetModelRequest(model_id=demo.MODEL_ID), timeout=30)
        if current.sha256 == sha256 and current.state == common_pb2.MODEL_STATE_NORMAL:
            say(f"model {current.model_id} v{current.version} is already uploaded ({current.model_bytes} bytes)")
            return current
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
    model = upload_file(client, path, model_id=demo.MODEL_ID, fmt=common_pb2.MODEL_FORMAT_ONNX,
                        description="modelfleet demo: y = relu(x @ W + b)", progress=False)
    if model.state != common_pb2.MODEL_STATE_NORMAL:
        raise CliError(f"the demo model was rejected: {model.state_reason or 'state ' + str(model.state)}")
    say(f"uploaded model {model.model_id} v{model.version} ({model.model_bytes} bytes, sha256 {model.sha256[:12]})")
    return model


def _poll_deployment(client: Client, until: str, timeout: float, watch: list[Child]) -> deployments_pb2.Deployment:
    deadline = time.monotonic() + timeout
    while True:
        check_alive(watch)
        dep: deployments_pb2.Deployment = client.deployments.GetDeployment(
            deployments_pb2.GetDeploymentRequest(deployment_id=demo.MODEL_ID), timeout=30)
        if reached(dep, until):
            return dep
        if until != "stopped" and dep.status == common_pb2.DEPLOYMENT_STATUS_FAILED:
            raise CliError(f"deployment {dep.deployment_id} failed: {dep.status_reason or 'no reason given'}")
        if time.monotonic() >= deadline:
            raise CliError(f"deployment {dep.deployment_id} did not reach {until} within {timeout:g}s "
                           f"(status {render.deployment_status(dep.status)}: {dep.status_reason or 'no reason given'})")
        time.sleep(0.2)


def ensure_demo_deployment(client: Client, model: models_pb2.Model, timeout: float,
                           watch: list[Child]) -> deployments_pb2.StartDeploymentResponse:
    """Start deployment `demo` (wait_for started), or wait for the existing one."""
    try:
        dep = client.deployments.GetDeployment(
            deployments_pb2.GetDeploymentRequest(deployment_id=demo.MODEL_ID), timeout=30)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
        dep = None
    if dep is not None and dep.status == common_pb2.DEPLOYMENT_STATUS_FAILED:
        # It could not start anywhere last time: stop it and start afresh.
        say(f"deployment {demo.MODEL_ID} had failed ({dep.status_reason or 'no reason given'}); restarting it")
        req_stop = deployments_pb2.StopDeploymentRequest(deployment_id=demo.MODEL_ID, wait=True)
        req_stop.timeout.CopyFrom(duration(timeout))
        dep = client.deployments.StopDeployment(req_stop, timeout=timeout + 30).deployment
    if dep is not None and dep.status == common_pb2.DEPLOYMENT_STATUS_STOPPING:
        dep = _poll_deployment(client, "stopped", timeout, watch)
    if dep is None or dep.status == common_pb2.DEPLOYMENT_STATUS_STOPPED:
        req = deployments_pb2.StartDeploymentRequest(
            model_id=model.model_id, model_version=model.version, deployment_id=demo.MODEL_ID,
            wait_for=deployments_pb2.WAIT_FOR_STARTED, description="the modelfleet up demo",
        )
        req.timeout.CopyFrom(duration(timeout))
        say(f"starting deployment {demo.MODEL_ID} (wait_for started) ...")
        try:
            resp: deployments_pb2.StartDeploymentResponse = client.deployments.StartDeployment(
                req, timeout=timeout + 30)
            return resp
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
    say(f"deployment {demo.MODEL_ID} exists; waiting for it to be started ...")
    dep = _poll_deployment(client, "started", timeout, watch)
    resp = deployments_pb2.StartDeploymentResponse(deployment=dep)
    if dep.allocations:
        resp.allocation.CopyFrom(dep.allocations[0])
    return resp


def check_inference(client: Client, timeout: float, watch: list[Child]) -> tuple[np.ndarray[Any, Any], bool]:
    """Infer DEMO_INPUT through the gateway (retrying while no worker is routed yet)."""
    deadline = time.monotonic() + timeout
    while True:
        check_alive(watch)
        try:
            _, outputs = infer(client, demo.MODEL_ID, {demo.INPUT_NAME: demo.DEMO_INPUT}, timeout=30)
            break
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    if demo.OUTPUT_NAME not in outputs:
        raise CliError(f"the demo answer has no output {demo.OUTPUT_NAME!r} (got {sorted(outputs)})")
    got = outputs[demo.OUTPUT_NAME]
    want = demo.expected_output(demo.DEMO_INPUT)
    ok = got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-5, atol=1e-6))
    return got, ok


def run_demo(client: Client, fleet: LocalFleet, as_json: bool) -> None:
    """Upload, deploy, show the allocation, infer once and check the answer."""
    model = ensure_demo_model(client, fleet.data_dir)
    resp = ensure_demo_deployment(client, model, fleet.start_timeout, fleet.children)
    say("allocation:")
    say(render.proto_json(resp) if as_json else render.dumps(render.start_response_seed(resp)))
    got, ok = check_inference(client, fleet.start_timeout, fleet.children)
    x = json.dumps(to_list(demo.DEMO_INPUT))
    say(f"inference: {demo.INPUT_NAME} = {x}")
    say(f"           {demo.OUTPUT_NAME} = {json.dumps(to_list(got))}")
    if not ok:
        want = json.dumps(to_list(demo.expected_output(demo.DEMO_INPUT)))
        raise CliError(f"the served answer differs from numpy's {want}")
    say("           ok: equals relu(x @ W + b) computed with numpy")
    say()
    say("try it:")
    say(f"  export MODELFLEET_ADDR={fleet.addr}")
    if fleet.auth:
        say(f"  export MODELFLEET_TOKEN_FILE={fleet.data_dir / 'control-plane' / 'admin.key'}")
    say(f"  modelfleet infer {demo.MODEL_ID} --input '{demo.INPUT_NAME}=[[1.0, 2.0, 3.0, 4.0]]'")
    say(f"  modelfleet deployments stats {demo.MODEL_ID}")
    say("  modelfleet nodes list")
    if fleet.rest:
        say(f"  curl {fleet.rest}/_ml/trained_models/{demo.MODEL_ID}/_stats"
            + (f" -H \"Authorization: ApiKey $(cat {fleet.data_dir / 'control-plane' / 'admin.key'})\"" if fleet.auth else ""))


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def up_command(args: argparse.Namespace, client: Client) -> int:
    data_dir = args.data_dir.resolve()
    fleet = LocalFleet(data_dir, listen=args.listen, agents=args.agents, start_timeout=args.start_timeout,
                       shutdown_timeout=args.shutdown_timeout, auth=args.auth == "on", http_listen=args.http_listen)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C must stop `up` even when it was started with SIGINT ignored
    # (a background job of a non-interactive shell).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    rc = 0
    try:
        fleet.lock()
        fleet.start()
        with Client(fleet.addr, fleet.token or client.token) as local:
            say(f"waiting for {args.agents} node(s) to be ready ...")
            nodes = fleet.wait_nodes_ready(local)
            say("nodes ready: " + ", ".join(n.node_id for n in nodes))
            if not args.no_demo:
                run_demo(local, fleet, args.json)
            say()
            rest = f", REST at {fleet.rest}" if fleet.rest else ""
            say(f"modelfleet is up: control plane at {fleet.addr}{rest}, {args.agents} agent(s), data in {data_dir}, "
                f"logs in {fleet.logs}")
            say("press Ctrl-C to stop")
            fleet.serve()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (Terminated): a clean stop
        say()
    except ChildDied as died:
        print(f"error: {died}; last lines of {died.child.log_path}:", file=sys.stderr)
        for line in died.child.tail(20):
            print(f"  {line}", file=sys.stderr)
        rc = 1
    except grpc.RpcError as err:
        print(format_rpc_error(err, fleet.addr or args.listen), file=sys.stderr)
        rc = 1
    except (CliError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        rc = exc.code if isinstance(exc, CliError) else 1
        if isinstance(exc, TimeoutError) and fleet.control_plane is not None:
            print(f"last lines of {fleet.control_plane.log_path}:", file=sys.stderr)
            for line in fleet.control_plane.tail(20):
                print(f"  {line}", file=sys.stderr)
    finally:
        try:
            fleet.shutdown()
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
    if rc == 0:
        say("stopped")
    return rc
