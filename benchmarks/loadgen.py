"""One load-generator process: a closed loop of `--concurrency` callers for a
fixed duration, printing one JSON line with the completed calls, errors,
req/s and latency percentiles.

    python benchmarks/loadgen.py grpc --target HOST:PORT --model NAME --shape 784 ...
    python benchmarks/loadgen.py stream --target HOST:PORT --model NAME --shape 784 ...
    python benchmarks/loadgen.py raw --onnx MODEL.onnx --threads 1 --model-threads 2 ...

`grpc`: V2 ModelInfer over one grpc.aio channel (`--channels N`: N separate
connections, callers spread over them); the request is serialized
once and sent as raw bytes, and replies are not decoded (one is, before the
clock starts, to check the answer), so the generator spends as little CPU as
a Python client can. `stream`: the same requests on one ModelStreamInfer
stream (Triton's bidirectional stream), `--concurrency` of them in flight:
each answer sends the next request of its slot (a request per slot,
serialized once, its id naming the slot). `raw`: onnxruntime in this process, the limit:
`--concurrency` threads call session.run, at most `--model-threads` at once
(the same bounded concurrency the worker's model threads give), on one
session with `--threads` intra-op threads. Calls that complete in the
warm-up are not counted; the measured window is `--duration` seconds.
`--cpu-pids` adds the CPU seconds (utime + stime from /proc) each of those
processes used in that window, read by this process at its two ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _summary(latencies: list[float], errors: int, elapsed: float, first_error: str = "") -> dict[str, object]:
    lat = np.array(latencies) if latencies else np.array([0.0])
    return {
        "count": len(latencies),
        "errors": errors,
        "first_error": first_error,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) * 1e3,
        "p99_ms": float(np.percentile(lat, 99)) * 1e3,
        "seconds": elapsed,
    }


def _input(shape: list[int]) -> np.ndarray:
    return np.random.default_rng(0).random((1, *shape), dtype=np.float32)


_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def _request_body(args: argparse.Namespace, request_id: str = "") -> bytes:
    """A serialized V2 request of `--model` with one `--shape` input (serialized once per caller slot)."""
    from modelfleet.inference import grpc_service_pb2 as pb

    x = _input(args.shape)
    req = pb.ModelInferRequest(model_name=args.model, id=request_id)
    req.inputs.add(name="x", datatype="FP32", shape=x.shape)
    req.raw_input_contents.append(x.tobytes())
    return req.SerializeToString()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cpu_over_window(pids: list[int], measure_from: float, stop_at: float) -> dict[str, float]:
    """CPU seconds each pid used between measure_from and stop_at (perf_counter times)."""
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    before = {pid: cpu_seconds(pid) for pid in pids}
    await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
    return {str(pid): cpu_seconds(pid) - before[pid] for pid in pids}


async def run_grpc(args: argparse.Namespace) -> dict[str, object]:
    import grpc

    from modelfleet.inference import grpc_service_pb2 as pb

    body = _request_body(args)
    # distinct connections (no shared subchannel), so N server processes on one port each get some
    options = [*_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.channels)]
    calls = [channel.unary_unary("/inference.GRPCInferenceService/ModelInfer") for channel in channels]
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
    try:
        for call in calls:
            reply = pb.ModelInferResponse.FromString(await call(body, timeout=60, metadata=metadata))
            if not reply.raw_output_contents:
                raise SystemExit(f"unexpected reply: {reply}")
        start = time.perf_counter()
        measure_from = start + args.warmup
        stop_at = measure_from + args.duration
        latencies: list[float] = []
        errors = [0]
        first_error = [""]

        async def caller(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    await call(body, timeout=30, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    errors[0] += 1
                    first_error[0] = first_error[0] or f"{exc.code().name}: {exc.details()}"
                    continue
                t1 = time.perf_counter()
                if t0 >= measure_from and t1 <= stop_at:
                    latencies.append(t1 - t0)

        cpu = asyncio.create_task(_cpu_over_window(args.cpu_pids, measure_from, stop_at))
        await asyncio.gather(*(caller(calls[i % len(calls)]) for i in range(args.concurrency)))
        result = _summary(latencies, errors[0], args.duration, first_error[0])
        return result | ({"cpu_s": await cpu} if args.cpu_pids else {})
    finally:
        for channel in channels:
            await channel.close()


def run_raw(args: argparse.Namespace) -> dict[str, object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.onnx, sess_options=options, providers=["CPUExecutionProvider"])
    x = _input(args.shape)
    for _ in range(3):
        session.run(None, {"x": x})
    slots = threading.BoundedSemaphore(args.model_threads)
    start = time.perf_counter()
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    per_thread: list[list[float]] = [[] for _ in range(args.concurrency)]

    def caller(out: list[float]) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            with slots:
                session.run(None, {"x": x})
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= stop_at:
                out.append(t1 - t0)

    threads = [threading.Thread(target=caller, args=(out,)) for out in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _summary([v for out in per_thread for v in out], 0, args.duration)


async def run_stream(args: argparse.Namespace) -> dict[str, object]:
    import grpc

    from modelfleet.inference import grpc_service_pb2 as pb

    bodies = [_request_body(args, str(slot)) for slot in range(args.concurrency)]
    latencies: list[float] = []
    errors = [0]
    first_error = [""]
    async with grpc.aio.insecure_channel(args.target, options=_CHANNEL_OPTIONS) as channel:
        method = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
        call = method(metadata=metadata, timeout=args.warmup + args.duration + 60)
        start = time.perf_counter()
        measure_from = start + args.warmup
        stop_at = measure_from + args.duration
        sent = [0.0] * args.concurrency
        ready: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(args.concurrency):
            ready.put_nowait(slot)

        async def writer() -> None:  # one writer: a stream takes one write at a time
            while True:
                slot = await ready.get()
                sent[slot] = time.perf_counter()
                await call.write(bodies[slot])

        writing = asyncio.create_task(writer())
        open_slots = args.concurrency
        async for raw in call:
            answer = pb.ModelStreamInferResponse.FromString(raw)
            slot = int(answer.infer_response.id)
            t1 = time.perf_counter()
            if answer.error_message:
                errors[0] += 1
                first_error[0] = first_error[0] or answer.error_message
            elif sent[slot] >= measure_from and t1 <= stop_at:
                latencies.append(t1 - sent[slot])
            if t1 < stop_at:
                ready.put_nowait(slot)
                continue
            open_slots -= 1
            if not open_slots:
                break
        writing.cancel()
        call.cancel()
    return _summary(latencies, errors[0], args.duration, first_error[0])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("grpc", "stream", "raw"))
    p.add_argument("--target", default="")
    p.add_argument("--model", default="")
    p.add_argument("--onnx", default="")
    p.add_argument("--token", default="", help="an API key, sent as authorization: Bearer")
    p.add_argument("--shape", type=lambda s: [int(d) for d in s.split(",")], required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model-threads", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--channels", type=int, default=1, help="grpc: callers spread over this many connections")
    p.add_argument("--cpu-pids", type=lambda s: [int(v) for v in s.split(",") if v], default=[],
                   help="grpc: report the CPU seconds of these processes over the measured window")
    args = p.parse_args()
    if args.mode == "raw":
        result = run_raw(args)
    else:
        result = asyncio.run(run_stream(args) if args.mode == "stream" else run_grpc(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
