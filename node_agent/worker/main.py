"""`python -m node_agent.worker`: one inference worker process per allocation.

    python -m node_agent.worker --model PATH --format onnx|torchscript \
        --name DEPLOYMENT_ID --version VARIANT [--model-version N] \
        --inference-threads N --model-threads N --queue-capacity N \
        --host 127.0.0.1 --port 0 --ready-file PATH [--drain-timeout 30] \
        [--inputs-json JSON --outputs-json JSON] [--max-message-bytes 67108864] \
        [--token-file PATH --credentials-file PATH] [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] \
        [--max-batch-size N --max-queue-delay-us US] [--metrics-port P]

Order of events: parse arguments (bad ones: exit 2) -> load the model and,
when every input shape is static, run one warm-up inference with zeros
(failure: "load error: ..." as the last stderr line, exit 3, which the agent
treats as permanent) -> bind and start the grpc.aio server -> health SERVING
-> write the ready file atomically (tmp + rename) as JSON
{"port", "pid", "inputs", "outputs"}. SIGTERM/SIGINT then drain: refuse new
calls (UNAVAILABLE "worker is draining"), finish queued ones within
--drain-timeout, stop the server, exit 0. Any other non-zero exit is a crash.

With --token-file only the gateway and the agent (the token) and API keys
with `infer` (verifiers in --credentials-file) may call; --tls-* serve TLS
(mTLS with --tls-client-ca). See node_agent/worker/access.py.

--metrics-port P serves Prometheus /metrics on --host:P (0 = any free port,
written to the ready file as "metrics_port"; default off: the agent turns
it on and federates it). --max-batch-size N > 0 turns dynamic batching on (see service.py): the
model must have a dynamic first dimension on every input and output, else
the load fails (exit 3); --max-queue-delay-us is how long the oldest queued
call waits for others to join its batch.

Concurrency: the main thread runs the asyncio loop (server, admission,
signals); the work queue's model threads run the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc

from node_agent.runtime.base import FORMATS, LoadError, Runtime, TensorSpec, load_runtime, one_line, parse_specs_json
from node_agent.worker.access import WorkerAccess
from node_agent.worker.server import DEFAULT_MAX_MESSAGE_BYTES, build_server
from node_agent.worker.service import WorkerService, check_batchable, warm_up
from node_agent.worker.workqueue import Batching

logger = logging.getLogger("node_agent.worker")

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_ARGS = 2  # argparse's own code
EXIT_LOAD_ERROR = 3
MAX_QUEUE_CAPACITY = 1_000_000
MAX_BATCH_SIZE = 1 << 20
MAX_QUEUE_DELAY_US = 60_000_000
_SERVER_STOP_GRACE_S = 1.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m node_agent.worker", description="modelfleet inference worker")
    p.add_argument("--model", required=True, help="the model file")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--name", required=True, help="the model name clients use (the deployment id)")
    p.add_argument("--version", default="1", help="the version clients may name (the variant)")
    p.add_argument("--model-version", type=int, default=0,
                   help="the model's version number, which clients may also name (0 = unknown: only --version)")
    p.add_argument("--inference-threads", type=int, default=1, help="threads per inference")
    p.add_argument("--model-threads", type=int, default=1, help="inferences run at once")
    p.add_argument("--queue-capacity", type=int, default=1024, help="calls that may wait beyond those running")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = any free port (see the ready file)")
    p.add_argument("--ready-file", required=True, help="written atomically once serving")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish queued calls on SIGTERM")
    p.add_argument("--inputs-json", default=None, help="declared input specs (JSON list)")
    p.add_argument("--outputs-json", default=None, help="declared output specs (JSON list)")
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument("--token-file", type=Path, default=None, help="the allocation's worker token: callers must present it or a key")
    p.add_argument("--credentials-file", type=Path, default=None, help="verifiers of API keys that may call (reread on change)")
    p.add_argument("--tls-cert", default="", help="serve TLS with this certificate (PEM)")
    p.add_argument("--tls-key", default="", help="the private key of --tls-cert (PEM)")
    p.add_argument("--tls-client-ca", default="", help="demand client certificates signed by this CA (mTLS)")
    p.add_argument("--metrics-port", type=int, default=-1, help="serve Prometheus /metrics here (0 = any free port; default off)")
    p.add_argument("--inline-max-us", type=int, default=300,
                   help="run calls on the event loop while the model's average run time is below this (0 = never)")
    p.add_argument("--max-batch-size", type=int, default=0, help="rows per model run; 0 = no dynamic batching")
    p.add_argument("--max-queue-delay-us", type=int, default=0, help="how long a call waits for a batch to fill")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and range-check the arguments; exits 2 on any bad one."""
    parser = _parser()
    args = parser.parse_args(argv)
    checks = [
        (bool(args.name), "--name must not be empty"),
        (0 <= args.model_version <= 2**31 - 1, "--model-version must be 0..2147483647"),
        (1 <= args.inference_threads <= 1024, "--inference-threads must be 1..1024"),
        (1 <= args.model_threads <= 1024, "--model-threads must be 1..1024"),
        (1 <= args.queue_capacity <= MAX_QUEUE_CAPACITY, f"--queue-capacity must be 1..{MAX_QUEUE_CAPACITY}"),
        (0 <= args.port <= 65535, "--port must be 0..65535"),
        (args.drain_timeout >= 0, "--drain-timeout must be >= 0"),
        (1024 <= args.max_message_bytes <= 2**31 - 1, "--max-message-bytes must be 1024..2147483647"),
        (0 <= args.inline_max_us <= 100_000, "--inline-max-us must be 0..100000"),
        (-1 <= args.metrics_port <= 65535, "--metrics-port must be -1 (off) or 0..65535"),
        (0 <= args.max_batch_size <= MAX_BATCH_SIZE, f"--max-batch-size must be 0..{MAX_BATCH_SIZE}"),
        (0 <= args.max_queue_delay_us <= MAX_QUEUE_DELAY_US, f"--max-queue-delay-us must be 0..{MAX_QUEUE_DELAY_US}"),
    ]
    checks += [
        (bool(args.tls_cert) == bool(args.tls_key), "--tls-cert and --tls-key go together"),
        (not args.tls_client_ca or bool(args.tls_cert), "--tls-client-ca needs --tls-cert and --tls-key"),
        (args.credentials_file is None or args.token_file is not None, "--credentials-file needs --token-file"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    try:
        args.worker_token = args.token_file.read_text().strip() if args.token_file else ""
        args.server_credentials = _server_credentials(args)
    except OSError as exc:
        parser.error(f"cannot read {exc.filename}: {exc.strerror}")
    if args.token_file is not None and not args.worker_token:
        parser.error(f"--token-file {args.token_file} is empty")
    any_shape = args.format == "torchscript"
    try:
        args.declared_inputs = parse_specs_json(args.inputs_json, empty_shape_is_any=any_shape) if args.inputs_json else None
        args.declared_outputs = (
            parse_specs_json(args.outputs_json, empty_shape_is_any=any_shape) if args.outputs_json else None
        )
    except ValueError as exc:
        parser.error(f"bad declared specs: {exc}")
    return args


def _server_credentials(args: argparse.Namespace) -> grpc.ServerCredentials | None:
    if not args.tls_cert:
        return None
    pair = (Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())
    root = Path(args.tls_client_ca).read_bytes() if args.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)


def load(args: argparse.Namespace) -> Runtime:
    """Load and warm up the model.

    Raises:
        LoadError: the message to print after "load error: ".
    """
    runtime = load_runtime(
        args.model,
        args.format,
        inference_threads=args.inference_threads,
        declared_inputs=args.declared_inputs,
        declared_outputs=args.declared_outputs,
    )
    if args.max_batch_size > 0:
        check_batchable(runtime)
    try:
        warmed = warm_up(runtime)
    except Exception as exc:  # the runtime's ExecutionError/InputError, or anything else it raised
        raise LoadError(f"warm-up inference failed: {exc}") from exc
    logger.info("model %s loaded (%s); warm-up %s", args.model, args.format, "ran" if warmed else "skipped (dynamic shapes)")
    return runtime


def batching(args: argparse.Namespace) -> Batching | None:
    """The dynamic batching the flags ask for (None: off)."""
    if args.max_batch_size <= 0:
        return None
    return Batching(max_batch_size=args.max_batch_size, max_queue_delay_s=args.max_queue_delay_us / 1e6)


def write_ready_file(
    path: Path, *, port: int, inputs: list[TensorSpec], outputs: list[TensorSpec], metrics_port: int | None = None
) -> None:
    """Write the ready file atomically: a reader sees all of it or nothing."""
    body: dict[str, Any] = {
        "port": port,
        **({"metrics_port": metrics_port} if metrics_port is not None else {}),
        "pid": os.getpid(),
        "inputs": [s.to_json() for s in inputs],
        "outputs": [s.to_json() for s in outputs],
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(body, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


async def serve(args: argparse.Namespace, runtime: Runtime) -> int:
    """Serve until SIGTERM/SIGINT, then drain and return the exit code."""
    loop = asyncio.get_running_loop()
    service = WorkerService(
        runtime,
        name=args.name,
        version=args.version,
        model_version=args.model_version,
        model_threads=args.model_threads,
        queue_capacity=args.queue_capacity,
        loop=loop,
        batching=batching(args),
        inline_max_s=args.inline_max_us / 1e6,
    )
    try:
        server, port = await build_server(
            service,
            host=args.host,
            port=args.port,
            max_message_bytes=args.max_message_bytes,
            drain_timeout=args.drain_timeout,
            access=WorkerAccess(worker_token=args.worker_token, credentials_file=args.credentials_file)
            if args.worker_token
            else None,
            credentials=args.server_credentials,
        )
    except RuntimeError as exc:
        logger.error("%s", exc)
        return EXIT_CRASH
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics_port = None
    if args.metrics_port >= 0:
        from node_agent.worker.metrics import serve_metrics

        try:
            metrics_port = serve_metrics(service, host=args.host, port=args.metrics_port)
        except OSError as exc:
            logger.error("cannot serve metrics on %s:%d: %s", args.host, args.metrics_port, exc)
            return EXIT_CRASH
    await server.start()
    await service.start()
    write_ready_file(
        Path(args.ready_file), port=port, inputs=runtime.inputs, outputs=runtime.outputs, metrics_port=metrics_port
    )
    logger.info(
        "serving %s version %s on %s:%d (pid %d)%s", args.name, args.version, args.host, port, os.getpid(),
        f", dynamic batching up to {args.max_batch_size} rows, {args.max_queue_delay_us} us delay"
        if args.max_batch_size else "",
    )
    await stop.wait()
    logger.info("signal received: draining for up to %.1f s", args.drain_timeout)
    outcome = await service.drain(args.drain_timeout)
    logger.info("drained: %d completed, %d abandoned", outcome.completed, outcome.abandoned)
    await server.stop(_SERVER_STOP_GRACE_S)
    await service.stop()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s worker[%(process)d] %(name)s: %(message)s",
    )
    try:
        runtime = load(args)
    except LoadError as exc:
        logging.shutdown()
        print(f"load error: {one_line(str(exc))}", file=sys.stderr, flush=True)
        return EXIT_LOAD_ERROR
    return asyncio.run(serve(args, runtime))
