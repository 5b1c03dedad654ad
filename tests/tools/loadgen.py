"""A V2 ModelInfer load generator for integration tests, run as a subprocess
(its own process and GIL, so the load does not compete with pytest's).

Sends FP32 [1, 4] ones (input "x") to ADDR for MODEL and records, per
answer, the first element of the first output (models whose versions add
different constants tell apart that way) and, per failure, its status code,
details and grpc-retry-pushback-ms trailer. Open loop (`--rate R`: call i
starts at t0 + i/R whatever happened to the others, at most --concurrency in
flight; a call that would exceed that counts as "skipped") or closed loop
(`--rate 0`: --concurrency callers back to back). Stops after --count calls,
after --duration seconds, or once --until-file exists. Writes one JSON
object to --out (and stdout) when done; SIGTERM also ends it cleanly.

    python tests/tools/loadgen.py --addr H:P --model M [--version V]
        [--rate 100] [--concurrency 16] [--count N | --duration S | --until-file PATH]
        [--timeout 10] [--token KEY] --out result.json

The API key (--token, default $MODELFLEET_TOKEN) goes with every call as
`authorization: Bearer KEY`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import sys
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from modelfleet.inference import grpc_service_pb2 as v2  # noqa: E402
from modelfleet.inference import grpc_service_pb2_grpc as v2_grpc  # noqa: E402

METADATA: list[tuple[str, str]] = []  # the API key, as call metadata


class Result:
    def __init__(self) -> None:
        self.ok = 0
        self.outputs: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.details: dict[str, str] = {}
        self.pushback: list[int] = []
        self.missing_pushback = 0
        self.skipped = 0
        self.latencies_ms: list[float] = []
        self.ok_times: list[float] = []  # seconds since start of each success
        self.series: list[tuple[float, str]] = []  # (time.monotonic() at the answer, output) of each success
        self.error_times: list[tuple[float, str]] = []


async def one(stub: v2_grpc.GRPCInferenceServiceStub, req: v2.ModelInferRequest, res: Result, timeout: float, t0: float) -> None:
    started = time.monotonic()
    call = stub.ModelInfer(req, timeout=timeout, metadata=METADATA or None)
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        res.errors[code] += 1
        res.details.setdefault(code, exc.details() or "")
        res.error_times.append((started - t0, code))
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            trailers = dict(exc.trailing_metadata() or ())
            if "grpc-retry-pushback-ms" in trailers:
                res.pushback.append(int(trailers["grpc-retry-pushback-ms"]))
            else:
                res.missing_pushback += 1
        return
    res.ok += 1
    res.ok_times.append(time.monotonic() - t0)
    res.latencies_ms.append((time.monotonic() - started) * 1000)
    value = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)[0] if reply.raw_output_contents else float("nan")
    res.outputs[f"{float(value):g}"] += 1
    res.series.append((time.monotonic(), f"{float(value):g}"))


async def run(args: argparse.Namespace) -> Result:
    res = Result()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    req = v2.ModelInferRequest(model_name=args.model, model_version=args.version)
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    async with grpc.aio.insecure_channel(args.addr) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        await channel.channel_ready()
        t0 = time.monotonic()
        deadline = t0 + args.duration if args.duration else float("inf")
        until = Path(args.until_file) if args.until_file else None
        sent = 0

        def done() -> bool:
            return (
                stop.is_set()
                or (args.count and sent >= args.count)
                or time.monotonic() >= deadline
                or (until is not None and until.exists())
            )

        if args.rate > 0:
            inflight: set[asyncio.Task[None]] = set()
            while not done():
                target = t0 + sent / args.rate
                delay = target - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                sent += 1
                if len(inflight) >= args.concurrency:
                    res.skipped += 1
                    continue
                task = asyncio.create_task(one(stub, req, res, args.timeout, t0))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            if inflight:
                await asyncio.wait(inflight)
        else:

            async def caller() -> None:
                nonlocal sent
                while not done():
                    sent += 1
                    await one(stub, req, res, args.timeout, t0)

            await asyncio.gather(*(caller() for _ in range(args.concurrency)))
        res.elapsed = time.monotonic() - t0  # type: ignore[attr-defined]
        res.t0 = t0  # type: ignore[attr-defined]
        res.sent = sent  # type: ignore[attr-defined]
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", default="")
    p.add_argument("--token", default=os.environ.get("MODELFLEET_TOKEN", ""), help="API key (default $MODELFLEET_TOKEN)")
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--duration", type=float, default=0.0)
    p.add_argument("--until-file", default="")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.token:
        METADATA[:] = [("authorization", f"Bearer {args.token}")]
    res = asyncio.run(run(args))
    lat = sorted(res.latencies_ms)
    out = {
        "sent": res.sent,  # type: ignore[attr-defined]
        "elapsed_s": res.elapsed,  # type: ignore[attr-defined]
        "ok": res.ok,
        "outputs": dict(res.outputs),
        "errors": dict(res.errors),
        "details": res.details,
        "pushback_ms": res.pushback[:50],
        "pushback_count": len(res.pushback),
        "missing_pushback": res.missing_pushback,
        "skipped": res.skipped,
        "ok_times": res.ok_times,
        "t0_monotonic": res.t0,  # type: ignore[attr-defined]
        "series": res.series,
        "error_times": res.error_times[:200],
        "p50_ms": lat[len(lat) // 2] if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] if lat else None,
    }
    text = json.dumps(out)
    Path(args.out).write_text(text)
    print(json.dumps({k: v for k, v in out.items() if k not in ("ok_times", "error_times", "series")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
