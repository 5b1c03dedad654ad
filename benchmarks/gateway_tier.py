"""The gateway-tier benchmark: what `modelfleet-gateway` costs per forwarded
call against a bare grpc.aio bytes proxy in front of the same worker, in
one run, and what a second gateway process on the same host buys.

    python benchmarks/gateway_tier.py                    # c=1,4,16, 3 s per point, 3 rounds
    python benchmarks/gateway_tier.py --duration 0.3 --warmup 0.1 --rounds 1 --concurrency 2   # smoke

It starts a control plane (authentication on) and one agent serving the MLP
of benchmarks/models.py (one worker), then, all at once: `modelfleet-gateway
--processes 1`, `modelfleet-gateway --processes 2` (a key of the gateway
role each) and benchmarks/bytes_proxy.py once per `--proxy-channels` value
(the proxy's knob: channels to the worker), each proxy presenting the
worker token read from the routes watch. Concurrency by concurrency, round
by round, every path is driven in turn by benchmarks/loadgen.py (its own
process, `--client-channels` connections, so the kernel spreads them over
the processes sharing a port); the load generator reads from /proc, at the
two ends of the measured window, the CPU (utime + stime) of:

- every process of the path's gateway (the supervisor and its children), or the proxy;
- the control plane: the data path bypasses it, so its CPU per call through a
  gateway should match that while the proxy carries the load (its own
  background work: reconcile ticks, heartbeats, the watch, the stats reports);
- the worker (the same for every path: a check that the paths did the same work).

A table cell is the median over the rounds; a ratio is the median of the
per-round ratios. The best proxy (lowest CPU per call at that concurrency,
by median) is the reference: gateway CPU per call ÷ proxy CPU per call
(target ≤ 1.3), and 2-process ÷ 1-process req/s. `--json` writes every point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import grpc  # noqa: E402
import models  # noqa: E402
import serving  # noqa: E402

from modelfleet.v1 import auth_pb2, auth_pb2_grpc, gateways_pb2, gateways_pb2_grpc  # noqa: E402

MODEL = "mlp"
TARGET_RATIO = 1.3


@dataclass
class Target:
    """One way to the worker: its address, the key the load generator presents, the pids it runs as."""

    name: str
    address: str
    pids: list[int]
    token: str = ""
    metrics_ports: list[int] = field(default_factory=list)


def _key(channel: grpc.Channel, role: str, workdir: Path, name: str) -> tuple[str, Path]:
    token = auth_pb2_grpc.AuthStub(channel).CreateApiKey(auth_pb2.CreateApiKeyRequest(roles=[role], name=name), timeout=30).token
    path = workdir / f"{name}.key"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token, path


def _worker_route(address: str, gateway_token: str) -> gateways_pb2.GatewayRoute:
    """The started worker of the deployment, from the first snapshot of the routes watch."""
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        while time.monotonic() < deadline:
            call = gateways_pb2_grpc.GatewaysStub(channel).WatchRoutes(
                gateways_pb2.WatchRoutesRequest(gateway_id="benchmark"), metadata=(("authorization", f"Bearer {gateway_token}"),)
            )
            snapshot = next(call)
            call.cancel()
            routes = [r for d in snapshot.deployments if d.record.deployment_id == MODEL for r in d.routes]
            if routes:
                return routes[0]
            time.sleep(0.2)
    raise SystemExit("no started worker on the routes watch after 60 s")


def _worker_pid(workdir: Path) -> int:
    """The pid of the worker whose ready file lies under workdir (from /proc cmdlines)."""
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if b"node_agent.worker" in args and b"--ready-file" in args:
            if Path(args[args.index(b"--ready-file") + 1].decode()).is_relative_to(workdir):
                return int(entry.name)
    raise SystemExit("the worker process was not found")


def _gateway(procs: serving.Procs, *, address: str, key_file: Path, processes: int, workdir: Path) -> Target:
    ready = workdir / f"gateway-x{processes}.ready"
    ready.unlink(missing_ok=True)
    proc = procs.start(f"gateway-x{processes}", [
        sys.executable, "-m", "control_plane.gateway.main", "--control-plane", address, "--listen", "127.0.0.1:0",
        "--processes", str(processes), "--token-file", str(key_file), "--metrics-port", "0", "--ready-file", str(ready),
        "--log-level", "WARNING",
    ])  # fmt: skip
    info = json.loads(serving.wait_file(ready, proc, what=f"gateway --processes {processes}"))
    pids = sorted({proc.pid, *info["pids"]})
    return Target(f"gateway-x{processes}", f"127.0.0.1:{info['port']}", pids, metrics_ports=info["metrics_ports"])


def _proxy(procs: serving.Procs, *, route: gateways_pb2.GatewayRoute, channels: int, workdir: Path) -> Target:
    port_file = workdir / f"proxy-ch{channels}.port"
    port_file.unlink(missing_ok=True)
    token_file = workdir / "worker.token"
    token_file.write_text(route.token)
    token_file.chmod(0o600)
    proc = procs.start(f"proxy-ch{channels}", [
        sys.executable, str(ROOT / "benchmarks" / "bytes_proxy.py"), "--target", route.address, "--port-file", str(port_file),
        "--token-file", str(token_file), "--channels", str(channels),
    ])  # fmt: skip
    port = serving.wait_file(port_file, proc, what=f"proxy with {channels} channels")
    return Target(f"proxy-ch{channels}", f"127.0.0.1:{port}", [proc.pid])


def _await_serving(path: Target, token: str) -> None:
    """Until a call through the path answers (a gateway serves once it holds its first snapshot)."""
    from modelfleet.inference import grpc_service_pb2 as pb
    from modelfleet.inference import grpc_service_pb2_grpc as pb_grpc

    req = pb.ModelInferRequest(model_name=MODEL)
    req.inputs.add(name="x", datatype="FP32", shape=[1, *models.INPUT_SHAPES[MODEL]])
    req.raw_input_contents.append(bytes(4 * models.INPUT_SHAPES[MODEL][0]))
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(path.address) as channel:
        while True:
            try:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, metadata=metadata, timeout=10)
                return
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{path.name} does not serve: {exc.code().name} {exc.details()}") from exc
                time.sleep(0.1)


@dataclass
class Fleet:
    paths: list[Target]
    cp_pid: int
    worker_pid: int


@contextlib.contextmanager
def fleet(args: argparse.Namespace, workdir: Path) -> Iterator[Fleet]:
    """Control plane + agent + the MLP deployment, the gateways and the proxies, all serving."""
    procs = serving.Procs(workdir)
    cp_dir = workdir / "cp"
    cp_dir.mkdir(parents=True)
    cp = procs.start("control-plane", [sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0",
                                       "--data-dir", str(cp_dir), "--log-level", "WARNING"])  # fmt: skip
    try:
        address = serving.wait_file(cp_dir / "endpoint", cp, what="control plane")
        admin = serving.wait_file(cp_dir / "admin.key", cp, what="control plane's admin key")
        with grpc.intercept_channel(grpc.insecure_channel(address), serving._Bearer(admin)) as channel:
            agent_key = serving._agent_key(channel, workdir)
            procs.start("agent", [sys.executable, "-m", "node_agent.main", "--control-plane", address, "--data-dir",
                                  str(workdir / "agent"), "--cpus", "64", "--token-file", str(agent_key),
                                  "--log-level", "WARNING"])  # fmt: skip
            serving._upload(channel, name=MODEL, path=models.build(MODEL, workdir / "models"))
            serving._deploy(args, channel, name=MODEL, batched=False)
            caller, _ = _key(channel, "inference", workdir, "caller")
            gateway_token, gateway_key = _key(channel, "gateway", workdir, "gateway")
        route = _worker_route(address, gateway_token)
        paths = [_proxy(procs, route=route, channels=n, workdir=workdir) for n in args.proxy_channels]
        gateways = [_gateway(procs, address=address, key_file=gateway_key, processes=n, workdir=workdir) for n in args.processes]
        for gw in gateways:
            gw.token = caller
        for path in paths + gateways:
            _await_serving(path, path.token)
        yield Fleet(paths + gateways, cp.pid, _worker_pid(workdir / "agent"))
    finally:
        procs.stop_all()


def _served(ports: list[int]) -> list[float]:
    """Each gateway process's count of answered calls (its /metrics)."""
    counts = []
    for port in ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        line = f'modelfleet_gateway_requests_total{{deployment="{MODEL}",status="OK"}} '
        counts.append(sum(float(v.split()[-1]) for v in text.splitlines() if v.startswith(line)))
    return counts


def measure(args: argparse.Namespace, f: Fleet) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for c in args.concurrency:
        for round_ in range(args.rounds):
            for path in f.paths:
                before = _served(path.metrics_ports)
                pids = [*path.pids, f.cp_pid, f.worker_pid]
                result = serving.loadgen(args, "grpc", MODEL, c, target=path.address, model=MODEL, token=path.token,
                                         channels=args.client_channels, cpu_pids=",".join(map(str, pids)))  # fmt: skip
                served = [b - a for a, b in zip(before, _served(path.metrics_ports), strict=True)]
                cpu = result.pop("cpu_s")
                calls = max(result["count"], 1)
                row = {"path": path.name, "concurrency": c, "round": round_, **result,
                       "server_us": 1e6 * sum(cpu[str(p)] for p in path.pids) / calls,
                       "cp_us": 1e6 * cpu[str(f.cp_pid)] / calls, "worker_us": 1e6 * cpu[str(f.worker_pid)] / calls,
                       "process_shares": [round(s / max(sum(served), 1), 2) for s in served],
                       "load_avg": os.getloadavg()[0]}  # fmt: skip
                rows.append(row)
                print(f"  {path.name:12s} c={c:<3d} {row['rps']:8.1f} req/s  {row['server_us']:6.0f} µs/call  "
                      f"control plane {row['cp_us']:5.1f} µs/call  worker {row['worker_us']:5.0f} µs/call"
                      + (f"  errors {row['errors']} ({row['first_error']})" if row["errors"] else ""), flush=True)  # fmt: skip
    return rows


# ---- the report -------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _point(rows: list[dict[str, Any]], path: str, c: int) -> dict[str, float]:
    group = [r for r in rows if r["path"] == path and r["concurrency"] == c]
    return {k: _median([r[k] for r in group]) for k in ("rps", "server_us", "cp_us", "worker_us", "p99_ms")}


def _ratio(rows: list[dict[str, Any]], c: int, a: str, b: str, key: str) -> float:
    """Median over the rounds of a / b (each round's paths ran seconds apart)."""
    by = {(r["path"], r["round"]): r[key] for r in rows if r["concurrency"] == c}
    return _median([by[(a, n)] / by[(b, n)] for (p, n) in by if p == a and (b, n) in by and by[(b, n)]])


def summarize(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Per concurrency: the best proxy, every path's medians, and the ratios."""
    out: dict[str, Any] = {}
    for c in args.concurrency:
        proxies = {f"proxy-ch{n}": _point(rows, f"proxy-ch{n}", c) for n in args.proxy_channels}
        best = min(proxies, key=lambda p: proxies[p]["server_us"])
        point: dict[str, Any] = {"best_proxy": best, "proxies": proxies}
        for n in args.processes:
            gw = f"gateway-x{n}"
            point[gw] = _point(rows, gw, c) | {"cpu_vs_proxy": _ratio(rows, c, gw, best, "server_us")}
            point[gw]["process_shares"] = [r["process_shares"] for r in rows if r["path"] == gw and r["concurrency"] == c][-1]
        if {1, 2} <= set(args.processes):
            point["x2_vs_x1_rps"] = _ratio(rows, c, "gateway-x2", "gateway-x1", "rps")
        out[str(c)] = point
    return out


def tables(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = ["Gateway tier: MLP, one worker; CPU per call from /proc over the measured window (µs), medians of "
             f"{args.rounds} round(s)", "",
             "| conc | proxy (best) req/s | proxy µs/call | " + " | ".join(
                 f"gw ×{n} req/s | gw ×{n} µs/call | gw ×{n} ÷ proxy" for n in args.processes)
             + " | 2 procs ÷ 1 req/s | cp µs/call via gw ×1 | cp µs/call via proxy | worker µs/call |",
             "|---:|---:|---:|" + "---:|" * (3 * len(args.processes) + 4)]  # fmt: skip
    for c, p in summary.items():
        best = p["proxies"][p["best_proxy"]]
        cells = [c, f"{best['rps']:.0f} ({p['best_proxy'].removeprefix('proxy-ch')} ch)", f"{best['server_us']:.0f}"]
        for n in args.processes:
            gw = p[f"gateway-x{n}"]
            cells += [f"{gw['rps']:.0f}", f"{gw['server_us']:.0f}", f"{gw['cpu_vs_proxy']:.2f}"]
        first = p[f"gateway-x{args.processes[0]}"]
        cells += [f"{p['x2_vs_x1_rps']:.2f}" if "x2_vs_x1_rps" in p else "–", f"{first['cp_us']:.1f}", f"{best['cp_us']:.1f}",
                  f"{first['worker_us']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    lines += ["", "Proxy sweep (channels to the worker): req/s, µs/call", "",
              "| conc | " + " | ".join(f"{n} ch" for n in args.proxy_channels) + " |",
              "|---:|" + "---:|" * len(args.proxy_channels)]  # fmt: skip
    for c, p in summary.items():
        lines.append(f"| {c} | " + " | ".join(f"{v['rps']:.0f}, {v['server_us']:.0f}" for v in p["proxies"].values()) + " |")
    lines += [""] + [_verdict(c, p, args) for c, p in summary.items()]
    return "\n".join(lines)


def _verdict(c: str, p: dict[str, Any], args: argparse.Namespace) -> str:
    gw = p[f"gateway-x{args.processes[0]}"]
    met = "met" if gw["cpu_vs_proxy"] <= TARGET_RATIO else "NOT met"
    extra = f"; ×2 processes served shares {p['gateway-x2']['process_shares']}" if "gateway-x2" in p else ""
    return (f"c={c}: gateway ×{args.processes[0]} CPU/call ÷ proxy = {gw['cpu_vs_proxy']:.2f} "
            f"(target ≤ {TARGET_RATIO}: {met}); control plane {gw['cp_us']:.1f} µs/call via the gateway, "
            f"{p['proxies'][p['best_proxy']]['cp_us']:.1f} via the proxy (its background work){extra}")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    p = argparse.ArgumentParser(prog="python benchmarks/gateway_tier.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=ints, default=[1, 4, 16], help="comma list (default 1,4,16)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per point (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="every path this many times per concurrency, interleaved")
    p.add_argument("--processes", type=ints, default=[1, 2], help="gateway process counts (default 1,2)")
    p.add_argument("--proxy-channels", type=ints, default=[1, 2, 4], help="the proxy's channels to the worker, swept")
    p.add_argument("--client-channels", type=int, default=8, help="load generator connections (default 8)")
    p.add_argument("--inference-threads", type=int, default=1)
    p.add_argument("--model-threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--workdir", default="", help="models, logs, data dirs (default: a new temp dir)")
    p.add_argument("--json", default="", help="also write every point and the summary as JSON to this file")
    args = p.parse_args(argv)
    if args.rounds < 1 or not args.concurrency or not args.processes or not args.proxy_channels:
        p.error("--rounds must be at least 1; --concurrency, --processes and --proxy-channels need a value")
    args.max_batch_size, args.max_queue_delay_us = 0, 0  # serving._deploy's batching knobs: off
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="modelfleet-gwtier-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine_at_start": serving.machine(), "config": vars(args) | {"workdir": str(workdir)}}
    print(serving.machine_line(), flush=True)
    with fleet(args, workdir / f"run-{os.getpid()}") as f:
        report["results"] = measure(args, f)
    report["summary"] = summarize(report["results"], args)
    report["machine_at_end"] = serving.machine()
    print()
    print(tables(report["summary"], args))
    print(serving.machine_line())
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
