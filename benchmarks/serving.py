"""The serving benchmark: modelfleet against the physical limit (onnxruntime
called in-process) and against a minimal grpcio server, in one run.

    python benchmarks/serving.py                 # full run (~15-20 minutes on 2 cores)
    python benchmarks/serving.py --quick         # 1 s per point, concurrency 1 and 4
    python benchmarks/serving.py --json out.json --models mlp --concurrency 16,64

For each model (benchmarks/models.py builds them: an MLP where serving
overhead dominates, a ResNet-18-shaped conv net where the runtime does) and
each concurrency it measures, for a fixed duration after a warm-up:

- raw:       onnxruntime in the load generator's process, the same session
             options, at most `model_threads` runs at once (the limit);
- reference: benchmarks/reference_server.py, a minimal grpcio server with
             one session and the same V2 messages (what Python gRPC costs);
- direct:    a V2 client straight to a modelfleet worker process
             (`python -m node_agent.worker`, the agent's command line);
- gateway:   the same client through the control plane's gateway, with a
             real control plane (authentication on: the client presents an
             API key), agent and worker started here;
- stream:    direct and gateway again over one ModelStreamInfer stream
             (Triton's bidirectional stream) with `concurrency` requests in flight;
- batched:   direct and gateway again with dynamic batching on (`--paths`).

Every server is started first; then, concurrency by concurrency, each path
is measured in turn, `--rounds` times over (default 3), so the ratios at one
concurrency compare figures taken within seconds of each other (the load of
a shared machine drifts). A table cell is the round of median req/s; a
ratio is the median of the per-round ratios.

Load generation runs in its own process (benchmarks/loadgen.py), never in a
server's. It prints req/s, p50 and p99 per point and the ratios b/a, c/a
(and against the reference), with the machine's core count and load average
beside every table, and writes everything as JSON with `--json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import grpc  # noqa: E402
import models  # noqa: E402
from serving_report import tables  # noqa: E402

PATHS = ("raw", "reference", "direct", "gateway", "stream-direct", "stream-gateway", "batched-direct", "batched-gateway")
DEFAULT_PATHS = PATHS


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_avg": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def machine_line() -> str:
    m = machine()
    return f"machine: {m['cpus_usable']} cores usable ({m['cores']} online), load average {m['load_avg'][0]:.2f} / {m['load_avg'][1]:.2f}"


class Procs:
    """Child processes of one benchmark phase, logging into the work dir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        log = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        log.close()
        self.children.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.children):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children.clear()


def wait_file(path: Path, proc: subprocess.Popen[bytes], *, timeout: float = 120.0, what: str) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}; see its log in {path.parent}")
        time.sleep(0.05)
    raise SystemExit(f"{what} not ready after {timeout:g} s")


def loadgen(args: argparse.Namespace, mode: str, kind: str, concurrency: int, **extra: Any) -> dict[str, Any]:
    argv = [
        sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), mode,
        "--shape", ",".join(str(d) for d in models.INPUT_SHAPES[kind]),
        "--concurrency", str(concurrency), "--duration", str(args.duration), "--warmup", str(args.warmup),
    ]  # fmt: skip
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + args.warmup + 120, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed ({' '.join(argv)}):\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---- servers --------------------------------------------------------------------------


@contextmanager
def reference_server(args: argparse.Namespace, path: Path, workdir: Path) -> Iterator[str]:
    procs = Procs(workdir)
    port_file = workdir / "reference.port"
    port_file.unlink(missing_ok=True)
    proc = procs.start(
        "reference",
        [sys.executable, str(ROOT / "benchmarks" / "reference_server.py"), str(path), "--port-file", str(port_file),
         "--threads", str(args.inference_threads), "--workers", str(args.reference_workers)],
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{wait_file(port_file, proc, what='reference server')}"
    finally:
        procs.stop_all()


def worker_argv(args: argparse.Namespace, path: Path, name: str, ready: Path, *, batched: bool) -> list[str]:
    argv = [
        sys.executable, "-m", "node_agent.worker", "--model", str(path), "--format", "onnx", "--name", name,
        "--inference-threads", str(args.inference_threads), "--model-threads", str(args.model_threads),
        "--queue-capacity", "1024", "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready),
        "--log-level", "WARNING",
    ]  # fmt: skip
    if batched:
        argv += ["--max-batch-size", str(args.max_batch_size), "--max-queue-delay-us", str(args.max_queue_delay_us)]
    return argv


@contextmanager
def direct_worker(args: argparse.Namespace, path: Path, name: str, workdir: Path, *, batched: bool) -> Iterator[str]:
    procs = Procs(workdir)
    ready = workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    proc = procs.start(f"worker-{name}", worker_argv(args, path, name, ready, batched=batched))
    try:
        port = json.loads(wait_file(ready, proc, what=f"worker {name}"))["port"]
        yield f"127.0.0.1:{port}"
    finally:
        procs.stop_all()


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self._pair = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or []), self._pair])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


def _agent_key(channel: grpc.Channel, workdir: Path) -> Path:
    """An API key with the agent role, in a file only its owner can read."""
    from modelfleet.v1 import auth_pb2, auth_pb2_grpc

    agent_key = auth_pb2_grpc.AuthStub(channel).CreateApiKey(
        auth_pb2.CreateApiKeyRequest(roles=["agent"], name="benchmark agent"), timeout=30
    ).token
    key_file = workdir / "agent.key"
    key_file.write_text(agent_key + "\n")
    key_file.chmod(0o600)
    return key_file


def _upload(channel: grpc.Channel, *, name: str, path: Path) -> None:
    from modelfleet.v1 import common_pb2, models_pb2, models_pb2_grpc

    data = path.read_bytes()

    def chunks() -> Iterator[models_pb2.UploadModelRequest]:
        yield models_pb2.UploadModelRequest(
            metadata=models_pb2.UploadModelMetadata(model_id=name, format=common_pb2.MODEL_FORMAT_ONNX)
        )
        for i in range(0, len(data), 1 << 20):
            yield models_pb2.UploadModelRequest(chunk=data[i : i + (1 << 20)])

    models_pb2_grpc.ModelRegistryStub(channel).UploadModel(chunks(), timeout=300)


def _deploy(args: argparse.Namespace, channel: grpc.Channel, *, name: str, batched: bool) -> None:
    """Starts `name` (or `name-batched`, dynamic batching on) and waits until it is STARTED."""
    from modelfleet.v1 import deployments_pb2, deployments_pb2_grpc

    variant = deployments_pb2.VariantSpec(
        model_id=name, weight=100, inference_threads=args.inference_threads,
        model_threads=args.model_threads, queue_capacity=1024,
        max_batch_size=args.max_batch_size if batched else 0,
        max_queue_delay_us=args.max_queue_delay_us if batched else 0,
    )  # fmt: skip
    request = deployments_pb2.StartDeploymentRequest(
        deployment_id=f"{name}-batched" if batched else name, variants=[variant],
        wait_for=deployments_pb2.WAIT_FOR_STARTED,
    )  # fmt: skip
    request.timeout.FromSeconds(300)
    deployments = deployments_pb2_grpc.DeploymentsStub(channel)
    deadline = time.monotonic() + 60
    while True:  # the agent may not have registered yet
        try:
            deployments.StartDeployment(request, timeout=330)
            return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def cluster(args: argparse.Namespace, workdir: Path, model_paths: dict[str, Path]) -> Iterator[tuple[str, str]]:
    """A control plane (authentication on, as in production) and one agent with
    its own key; every model deployed (and batched variants). Yields the
    gateway's address and the admin key the load generator presents."""
    procs = Procs(workdir)
    cp_dir = workdir / "cp"
    for stale in (cp_dir, workdir / "agent"):  # a fresh fleet every run
        shutil.rmtree(stale, ignore_errors=True)
    cp_dir.mkdir()
    cp = procs.start("control-plane", [sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0",
                                       "--data-dir", str(cp_dir), "--log-level", "WARNING"])  # fmt: skip
    try:
        address = wait_file(cp_dir / "endpoint", cp, what="control plane")
        token = wait_file(cp_dir / "admin.key", cp, what="control plane's admin key")
        plain = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 128 << 20)])
        with grpc.intercept_channel(plain, _Bearer(token)) as channel:
            key_file = _agent_key(channel, workdir)
            procs.start("agent", [sys.executable, "-m", "node_agent.main", "--control-plane", address, "--data-dir",
                                  str(workdir / "agent"), "--cpus", "64", "--token-file", str(key_file),
                                  "--log-level", "WARNING"])  # fmt: skip
            for name, path in model_paths.items():
                _upload(channel, name=name, path=path)
                for batched in (False, True):
                    _deploy(args, channel, name=name, batched=batched)
        yield address, token
    finally:
        procs.stop_all()


# ---- the run ----------------------------------------------------------------------------


def _record(results: list[dict[str, Any]], *, model: str, path: str, concurrency: int, result: dict[str, Any]) -> None:
    row = {"model": model, "path": path, "concurrency": concurrency, **result, "load_avg": os.getloadavg()[0]}
    results.append(row)
    print(
        f"  {model:5s} {path:16s} c={concurrency:<3d} {result['rps']:9.1f} req/s  p50 {result['p50_ms']:7.2f} ms"
        f"  p99 {result['p99_ms']:7.2f} ms" + (f"  errors {result['errors']} ({result['first_error']})" if result["errors"] else ""),
        flush=True,
    )


def _local_servers(
    args: argparse.Namespace, servers: contextlib.ExitStack, *, model: str, path: Path, workdir: Path
) -> dict[str, tuple[str, str]]:
    """The reference server and direct workers one model's paths need, entered on
    `servers`; returns path -> (address, model name)."""
    paths = set(args.paths)
    targets: dict[str, tuple[str, str]] = {}
    for key in ("reference", "direct", "batched-direct"):
        if key not in paths and not (key == "direct" and "stream-direct" in paths):
            continue
        logs = workdir / model / key
        logs.mkdir(parents=True, exist_ok=True)
        server = (
            reference_server(args, path, logs)
            if key == "reference"
            else direct_worker(args, path, model, logs, batched=key == "batched-direct")
        )
        targets[key] = (servers.enter_context(server), model)
    return targets


def _measure_model(
    args: argparse.Namespace, *, model: str, path: Path, targets: dict[str, tuple[str, str]], token: str,
    results: list[dict[str, Any]],
) -> None:  # fmt: skip
    """Concurrency by concurrency, `--rounds` times, every selected path in turn."""
    paths = set(args.paths)
    for c in sorted(set(args.concurrency) | set(args.batched_concurrency)):
        for round_ in range(args.rounds):
            for key in PATHS:
                batched = key.startswith("batched")
                if key not in paths or c not in (args.batched_concurrency if batched else args.concurrency):
                    continue
                if key == "raw":
                    result = loadgen(args, "raw", model, c, onnx=path, threads=args.inference_threads,
                                     model_threads=args.model_threads)  # fmt: skip
                else:
                    address, name = targets[key.removeprefix("stream-")]
                    auth = {"token": token} if key.endswith("gateway") else {}
                    mode = "stream" if key.startswith("stream") else "grpc"
                    result = loadgen(args, mode, model, c, target=address, model=name, **auth)
                _record(results, model=model, path=key, concurrency=c, result=result | {"round": round_})


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="modelfleet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model_paths = {name: models.build(name, workdir / "models") for name in args.models}
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {"machine_at_start": machine(), "config": vars(args) | {"workdir": str(workdir)}}
    print(machine_line(), flush=True)
    with contextlib.ExitStack() as stack:
        # every server up first, then the paths interleaved point by point, so that the
        # ratios at one concurrency compare figures taken within seconds of each other
        gateway = None
        token = ""
        if {"gateway", "stream-gateway", "batched-gateway"} & set(args.paths):
            gateway, token = stack.enter_context(cluster(args, workdir, model_paths))
        for model in args.models:
            path = model_paths[model]
            with contextlib.ExitStack() as servers:
                targets = _local_servers(args, servers, model=model, path=path, workdir=workdir)
                if gateway is not None:
                    targets["gateway"] = (gateway, model)
                    targets["batched-gateway"] = (gateway, f"{model}-batched")
                _measure_model(args, model=model, path=path, targets=targets, token=token, results=results)
    report["results"] = results
    report["machine_at_end"] = machine()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    names = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    p = argparse.ArgumentParser(prog="python benchmarks/serving.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 s per point, concurrency 1 and 4 (a smoke run)")
    p.add_argument("--models", type=names, default=list(models.MODELS), help="comma list of mlp, conv")
    p.add_argument("--paths", type=names, default=list(DEFAULT_PATHS), help=f"comma list of {', '.join(PATHS)}")
    p.add_argument("--concurrency", type=ints, default=None, help="default 1,4,16,64 (quick: 1,4)")
    p.add_argument("--batched-concurrency", type=ints, default=None, help="for the batched paths (default 64; quick: 4)")
    p.add_argument("--duration", type=float, default=None, help="seconds measured per point (default 3; quick: 1)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before measuring (default 1; quick: 0.3)")
    p.add_argument("--rounds", type=int, default=None,
                   help="measure every path this many times per concurrency, interleaved; tables show medians (default 3; quick: 1)")
    p.add_argument("--inference-threads", type=int, default=1)
    p.add_argument("--model-threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=500)
    p.add_argument("--reference-workers", type=int, default=16, help="the reference server's handler threads")
    p.add_argument("--workdir", default="", help="models, logs, data dirs (default: a new temp dir)")
    p.add_argument("--json", default="", help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    args.concurrency = args.concurrency or ([1, 4] if args.quick else [1, 4, 16, 64])
    args.batched_concurrency = args.batched_concurrency or ([4] if args.quick else [64])
    args.duration = args.duration if args.duration is not None else (1.0 if args.quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    bad = [m for m in args.models if m not in models.MODELS] + [q for q in args.paths if q not in PATHS]
    if bad:
        p.error(f"unknown model or path: {', '.join(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    text = tables(report)
    print()
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
