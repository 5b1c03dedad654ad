"""REST V2 binary infer vs gRPC ModelInfer through the same standalone gateway: the gateway's CPU per call.

    python benchmarks/rest_vs_grpc.py                    # MLP, 3 rounds of 3,000 calls per protocol, concurrency 4
    python benchmarks/rest_vs_grpc.py --calls 100 --rounds 1 --json out.json

One control plane, one agent and one MLP worker (benchmarks/models.py) and
one `modelfleet-gateway --processes 1 --http-listen` are started here. The
load is generated in this process (never in the gateway's): gRPC ModelInfer
with the request serialized once, and REST `POST /v2/models/mlp/infer` with
Triton's binary tensor data extension (the body built once, the answer's
output binary too), each at the same concurrency over kept-alive
connections. Round by round each protocol sends `--calls` calls in turn;
the gateway's CPU (utime + stime from /proc/PID/stat) over a round divided
by its calls is the CPU per call. The ratio is the median of the per-round
REST/gRPC ratios (target <= 1.25x). The gateway's own background work (a
stats report a second) is in both figures alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402
from serving import Procs, _agent_key, _Bearer, _deploy, _upload, machine, machine_line, wait_file  # noqa: E402

from modelfleet.inference import grpc_service_pb2 as pb  # noqa: E402

TARGET = 1.25
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def bodies(batch: int) -> tuple[bytes, bytes, int]:
    """The gRPC request bytes, the REST binary body and its JSON header's length, for one MLP input."""
    x = np.random.default_rng(7).standard_normal((batch, 784)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    header = json.dumps({
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    return request.SerializeToString(), header + x.tobytes(), len(header)


async def _closed_loop(call: Any, calls: int, concurrency: int) -> tuple[float, int]:
    """`calls` calls from `concurrency` workers; returns (seconds, errors)."""
    left = calls
    errors = 0

    async def worker() -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            if not await call():
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, errors


async def measure(args: argparse.Namespace, *, grpc_addr: str, http_addr: str, token: str, pid: int) -> list[dict[str, Any]]:
    request, body, header_length = bodies(args.batch)
    headers = {"Authorization": f"Bearer {token}", "Inference-Header-Content-Length": str(header_length),
               "Content-Type": "application/octet-stream"}
    metadata = (("authorization", f"Bearer {token}"),)
    rows: list[dict[str, Any]] = []
    async with grpc.aio.insecure_channel(grpc_addr) as channel, aiohttp.ClientSession() as session:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=None, response_deserializer=None)
        url = f"http://{http_addr}/v2/models/mlp/infer"

        async def grpc_call() -> bool:
            try:
                await infer(request, metadata=metadata, timeout=30)
                return True
            except grpc.aio.AioRpcError:
                return False

        async def rest_call() -> bool:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status == 200

        for call in (grpc_call, rest_call):  # warm-up: connections, caches
            await _closed_loop(call, max(20, args.calls // 10), args.concurrency)
        for round_no in range(args.rounds):
            for path, call in (("grpc", grpc_call), ("rest", rest_call)):
                before = cpu_seconds(pid)
                seconds, errors = await _closed_loop(call, args.calls, args.concurrency)
                used = cpu_seconds(pid) - before
                rows.append({"round": round_no, "path": path, "calls": args.calls, "errors": errors,
                             "req_per_s": args.calls / seconds, "cpu_us_per_call": used / args.calls * 1e6})
    return rows


def start_fleet(procs: Procs, workdir: Path) -> tuple[str, str, str, int]:
    """Control plane, agent, MLP deployment and a gateway with --http-listen: (grpc addr, http addr, token, gateway pid)."""
    cp_dir = workdir / "cp"
    cp_dir.mkdir()
    cp = procs.start("control-plane", [sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0",
                                       "--data-dir", str(cp_dir), "--log-level", "WARNING"])  # fmt: skip
    address = wait_file(cp_dir / "endpoint", cp, what="control plane")
    token = wait_file(cp_dir / "admin.key", cp, what="control plane's admin key")
    from modelfleet.v1 import auth_pb2, auth_pb2_grpc

    with grpc.intercept_channel(grpc.insecure_channel(address), _Bearer(token)) as channel:
        key_file = _agent_key(channel, workdir)
        procs.start("agent", [sys.executable, "-m", "node_agent.main", "--control-plane", address, "--data-dir",
                              str(workdir / "agent"), "--cpus", "64", "--token-file", str(key_file),
                              "--log-level", "WARNING"])  # fmt: skip
        _upload(channel, name="mlp", path=models.build("mlp", workdir))
        deploy_args = argparse.Namespace(inference_threads=1, model_threads=2, max_batch_size=0, max_queue_delay_us=0)
        _deploy(deploy_args, channel, name="mlp", batched=False)
        gateway_key = auth_pb2_grpc.AuthStub(channel).CreateApiKey(
            auth_pb2.CreateApiKeyRequest(roles=["gateway"], name="benchmark gateway"), timeout=30).token
    (workdir / "gateway.key").write_text(gateway_key + "\n")
    (workdir / "gateway.key").chmod(0o600)
    ready = workdir / "gateway.ready"
    gw = procs.start("gateway", [sys.executable, "-m", "control_plane.gateway.main", "--control-plane", address,
                                 "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--processes", "1",
                                 "--token-file", str(workdir / "gateway.key"), "--ready-file", str(ready),
                                 "--log-level", "WARNING"])  # fmt: skip
    info = json.loads(wait_file(ready, gw, what="gateway"))
    return f"127.0.0.1:{info['port']}", f"127.0.0.1:{info['http_port']}", token, info["pids"][0]


async def wait_routed(http_addr: str, token: str, *, timeout: float = 60.0) -> None:
    """Until the gateway's routes watch has delivered the MLP's worker."""
    _, body, header_length = bodies(1)
    headers = {"Authorization": f"Bearer {token}", "Inference-Header-Content-Length": str(header_length)}
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.post(f"http://{http_addr}/v2/models/mlp/infer", data=body, headers=headers) as resp:
                if resp.status == 200:
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(f"the gateway does not serve the MLP after {timeout:g} s: {resp.status} {await resp.text()}")
            await asyncio.sleep(0.1)  # polling a state we do not own: the gateway's routes


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_round.setdefault(row["round"], {})[row["path"]] = row
    ratios = [r["rest"]["cpu_us_per_call"] / r["grpc"]["cpu_us_per_call"] for r in by_round.values()
              if r["grpc"]["cpu_us_per_call"] > 0]
    return {"results": rows, "ratio_rest_over_grpc": statistics.median(ratios) if ratios else None, "target": TARGET}


def print_table(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"REST V2 binary vs gRPC ModelInfer through one modelfleet-gateway process, MLP batch {args.batch}, "
          f"concurrency {args.concurrency}")
    print(machine_line())
    print("| round | path | calls | errors | req/s | gateway CPU us/call |")
    print("|---|---|---|---|---|---|")
    for row in summary["results"]:
        print(f"| {row['round']} | {row['path']} | {row['calls']} | {row['errors']} | {row['req_per_s']:.0f} | "
              f"{row['cpu_us_per_call']:.0f} |")
    ratio = summary["ratio_rest_over_grpc"]
    verdict = "n/a" if ratio is None else f"{ratio:.2f}x ({'within' if ratio <= TARGET else 'over'} the {TARGET}x target)"
    print(f"REST/gRPC gateway CPU per call, median of rounds: {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000, help="calls per protocol per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--batch", type=int, default=1, help="rows of the MLP's input")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelfleet-rest-bench-"))
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    procs = Procs(workdir)
    try:
        grpc_addr, http_addr, token, pid = start_fleet(procs, workdir)
        asyncio.run(wait_routed(http_addr, token))
        rows = asyncio.run(measure(args, grpc_addr=grpc_addr, http_addr=http_addr, token=token, pid=pid))
    finally:
        procs.stop_all()
    summary = {**report(rows), "machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    print_table(summary, args)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
