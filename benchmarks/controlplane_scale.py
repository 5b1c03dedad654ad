"""Control-plane scale benchmark: 1,000 simulated agents and 1,000 deployments.

    python benchmarks/controlplane_scale.py                    # 1000 nodes, 1000 deployments
    python benchmarks/controlplane_scale.py --nodes 200 --deployments 200 --json out.json

A real control plane process (SQLite store, `--metrics-port 0`, no deployment
quota, `--auth off`:
a key is checked once per stream, which is not what this measures) and, in this
process, `--nodes` lightweight agents: one AgentControl.Connect stream each
(spread over a few channels), no workers. An agent registers, answers every
assignment at once with a report that marks each allocation STARTED, and
heartbeats at the interval the control plane asks for.

Phases, each timed: all agents connected; `--deployments` StartDeployment
calls (instances=1, wait_for=STARTING, `--start-concurrency` in flight);
then the time until every allocation is STARTED (polling the control
plane's /metrics, whose allocation counts are the routing table's), checked
at the end with a paged ListDeployments (BASIC view, `--page-size`) that
every deployment's route is STARTED; its bytes, time and the control plane's
peak RSS after it are reported, and the size of one page of the FULL view. Reported beside: the control plane's CPU seconds per phase, its
RSS now and at peak, and the reconcile tick durations (count, mean, max
bucket) from its own modelfleet_reconcile_duration_seconds histogram.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from modelfleet.v1 import (  # noqa: E402
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    deployments_pb2,
    deployments_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)


def tiny_model(path: Path) -> Path:
    """y = x + 1 on FP32 [-1, 4]: the registry must load something real."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(__import__("numpy").ones(4, dtype="float32"), "c")],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def proc_stats(pid: int) -> dict[str, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {
        "cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
    }


def scrape(endpoint: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


class SimAgent:
    """One simulated node: a Connect stream that answers assignments at once."""

    def __init__(self, index: int, channel: grpc.aio.Channel, *, cpus: float) -> None:
        self.node_id = f"sim-{index:05d}"
        self.channel = channel
        self.cpus = cpus
        self.generation = 0
        self.interval = 5.0
        self.welcomed = asyncio.Event()
        self.reports = 0
        self._lock = asyncio.Lock()

    async def _write(self, call: Any, message: agent_pb2.AgentMessage) -> None:
        async with self._lock:  # one writer at a time on a stream
            await call.write(message)

    async def run(self) -> None:
        call = agent_pb2_grpc.AgentControlStub(self.channel).Connect()
        node = agent_pb2.NodeInfo(
            node_id=self.node_id, hostname=self.node_id, agent_version="sim",
            capacity=common_pb2.NodeCapacity(cpus=self.cpus, memory_bytes=64 << 30),
        )  # fmt: skip
        await self._write(call, agent_pb2.AgentMessage(register=agent_pb2.RegisterNode(node=node)))
        beats = asyncio.create_task(self._heartbeats(call))
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                if message.HasField("welcome"):
                    self.interval = message.welcome.heartbeat_interval.ToTimedelta().total_seconds() or 5.0
                    self.welcomed.set()
                elif message.HasField("assignment") and message.assignment.generation > self.generation:
                    self.generation = message.assignment.generation
                    report = agent_pb2.RoutingReport(applied_generation=self.generation)
                    for spec in message.assignment.allocations:
                        item = report.allocations.add(
                            allocation_id=spec.allocation_id, deployment_id=spec.deployment_id,
                            routing_state=common_pb2.ROUTING_STATE_STARTED, worker_address="127.0.0.1:9",
                            worker_pid=1,
                        )  # fmt: skip
                        item.started_at.GetCurrentTime()
                    await self._write(call, agent_pb2.AgentMessage(report=report))
                    self.reports += 1
        finally:
            beats.cancel()
            call.cancel()

    async def _heartbeats(self, call: Any) -> None:
        await self.welcomed.wait()
        while True:
            await asyncio.sleep(self.interval * random.uniform(0.9, 1.1))
            await self._write(call, agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(applied_generation=self.generation)))


@dataclass
class Bench:
    """The handles one run shares across its phases; `shutdown` releases them."""

    args: argparse.Namespace
    workdir: Path
    cp: subprocess.Popen[bytes]
    log: IO[bytes]
    report: dict[str, Any]
    address: str = ""
    metrics: str = ""
    agents: list[SimAgent] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)


# a page of the FULL view can pass gRPC's 4 MiB receive default on a large fleet
BIG = [("grpc.max_receive_message_length", 1 << 30)]


def launch(args: argparse.Namespace) -> Bench:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="modelfleet-scale-"))
    shutil.rmtree(workdir / "cp", ignore_errors=True)
    (workdir / "cp").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    log = open(workdir / "control-plane.log", "wb")
    cp = subprocess.Popen(
        [sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0", "--data-dir", str(workdir / "cp"),
         "--metrics-port", "0", "--heartbeat-interval", str(args.heartbeat), "--node-timeout", str(args.heartbeat * 6),
         "--full-reconcile-every", str(args.full_every), "--auth", "off", "--max-deployments-per-user", "0",
         "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    report: dict[str, Any] = {"nodes": args.nodes, "deployments": args.deployments, "cores": os.cpu_count(),
                              "load_avg_start": os.getloadavg()[0]}  # fmt: skip
    return Bench(args=args, workdir=workdir, cp=cp, log=log, report=report)


async def wait_endpoints(bench: Bench) -> dict[str, float]:
    """Waits for the control plane's endpoint files; returns its CPU and RSS at that point."""
    cp_dir = bench.workdir / "cp"
    for _ in range(600):
        if (cp_dir / "metrics_endpoint").exists() and (cp_dir / "endpoint").exists():
            break
        if bench.cp.poll() is not None:
            raise SystemExit(f"control plane exited; see {bench.workdir / 'control-plane.log'}")
        await asyncio.sleep(0.05)
    bench.address = (cp_dir / "endpoint").read_text().strip()
    bench.metrics = (cp_dir / "metrics_endpoint").read_text().strip()
    return proc_stats(bench.cp.pid)


async def connect_agents(bench: Bench, base: dict[str, float]) -> None:
    args, report = bench.args, bench.report
    bench.channels = [grpc.aio.insecure_channel(bench.address) for _ in range(max(1, args.nodes // 50))]
    bench.agents = [SimAgent(i, bench.channels[i % len(bench.channels)], cpus=args.node_cpus) for i in range(args.nodes)]
    t0 = time.perf_counter()
    bench.tasks = [asyncio.create_task(a.run()) for a in bench.agents]
    await asyncio.gather(*(a.welcomed.wait() for a in bench.agents))
    while metric(scrape(bench.metrics), "modelfleet_connected_nodes") < args.nodes:
        await asyncio.sleep(0.1)
    report["connect_s"] = time.perf_counter() - t0
    connected = proc_stats(bench.cp.pid)
    report["connect_cpu_s"] = connected["cpu_s"] - base["cpu_s"]
    print(f"{args.nodes} agents connected in {report['connect_s']:.2f} s "
          f"(control plane CPU {report['connect_cpu_s']:.2f} s)", flush=True)  # fmt: skip


async def upload_tiny(channel: grpc.aio.Channel, workdir: Path) -> None:
    data = tiny_model(workdir / "tiny.onnx").read_bytes()

    async def upload() -> Any:
        yield models_pb2.UploadModelRequest(
            metadata=models_pb2.UploadModelMetadata(model_id="tiny", format=common_pb2.MODEL_FORMAT_ONNX)
        )
        yield models_pb2.UploadModelRequest(chunk=data)

    await models_pb2_grpc.ModelRegistryStub(channel).UploadModel(upload(), timeout=120)


async def start_calls(bench: Bench, channel: grpc.aio.Channel) -> tuple[float, float]:
    """`--deployments` StartDeployment calls, `--start-concurrency` in flight; returns
    the perf_counter times of the first call and of the last answer."""
    args, report = bench.args, bench.report
    deployments = deployments_pb2_grpc.DeploymentsStub(channel)
    gate = asyncio.Semaphore(args.start_concurrency)
    latencies: list[float] = []

    async def start(i: int) -> None:
        request = deployments_pb2.StartDeploymentRequest(
            model_id="tiny", deployment_id=f"dep-{i:05d}", instances=1,
            wait_for=deployments_pb2.WAIT_FOR_STARTING,
        )  # fmt: skip
        async with gate:
            s = time.perf_counter()
            await deployments.StartDeployment(request, timeout=600)
            latencies.append(time.perf_counter() - s)

    t_start = time.perf_counter()
    await asyncio.gather(*(start(i) for i in range(args.deployments)))
    t_last = time.perf_counter()
    report["start_calls_s"] = t_last - t_start
    latencies.sort()
    report["start_call_p50_ms"] = latencies[len(latencies) // 2] * 1e3
    report["start_call_p99_ms"] = latencies[int(len(latencies) * 0.99) - 1] * 1e3
    print(f"{args.deployments} StartDeployment calls answered in {report['start_calls_s']:.2f} s "
          f"(p50 {report['start_call_p50_ms']:.1f} ms, p99 {report['start_call_p99_ms']:.1f} ms)", flush=True)  # fmt: skip
    return t_start, t_last


async def wait_all_started(bench: Bench, *, t_start: float, t_last: float, before: dict[str, float]) -> None:
    """Polls /metrics (the routing table's allocation counts) until every allocation is STARTED."""
    args, report = bench.args, bench.report
    while True:
        samples = scrape(bench.metrics)
        started = metric(samples, "modelfleet_allocations", routing_state="STARTED", desired="RUNNING")
        if started >= args.deployments:
            break
        if time.perf_counter() - t_last > args.timeout:
            raise SystemExit(f"only {started:.0f} of {args.deployments} started after {args.timeout:g} s")
        await asyncio.sleep(0.1)
    t_all = time.perf_counter()
    after = proc_stats(bench.cp.pid)
    report["all_started_after_last_call_s"] = t_all - t_last
    report["all_started_after_first_call_s"] = t_all - t_start
    report["start_phase_cpu_s"] = after["cpu_s"] - before["cpu_s"]
    started_deployments = {
        dict(labels)["deployment"]
        for (name, labels), v in samples.items()
        if name == "modelfleet_routing_state" and dict(labels).get("state") == "STARTED" and v == 1
    }
    report["deployments_with_a_started_route"] = len(started_deployments)


async def start_deployments(bench: Bench) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Uploads the model, starts every deployment and waits until all are STARTED.
    Returns the /metrics samples taken just before the first StartDeployment."""
    async with grpc.aio.insecure_channel(bench.address, options=BIG) as channel:
        await upload_tiny(channel, bench.workdir)
        before = proc_stats(bench.cp.pid)
        hist_before = scrape(bench.metrics)
        t_start, t_last = await start_calls(bench, channel)
        await wait_all_started(bench, t_start=t_start, t_last=t_last, before=before)
    return hist_before


async def steady_state(bench: Bench, hist_before: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
    """Heartbeats only for `--steady` seconds, then the reconcile histograms."""
    report = bench.report
    steady0 = proc_stats(bench.cp.pid)
    await asyncio.sleep(bench.args.steady)
    steady1 = proc_stats(bench.cp.pid)
    report["steady_cpu_percent"] = (steady1["cpu_s"] - steady0["cpu_s"]) / bench.args.steady * 100
    report["rss_mb"] = steady1["rss_mb"]
    report["peak_rss_mb"] = steady1["peak_rss_mb"]
    final = scrape(bench.metrics)
    for scope in ("full", "scoped"):
        count = metric(final, "modelfleet_reconcile_duration_seconds_count", scope=scope)
        total = metric(final, "modelfleet_reconcile_duration_seconds_sum", scope=scope)
        count0 = metric(hist_before, "modelfleet_reconcile_duration_seconds_count", scope=scope)
        total0 = metric(hist_before, "modelfleet_reconcile_duration_seconds_sum", scope=scope)
        report[f"reconcile_{scope}_ticks"] = count
        report[f"reconcile_{scope}_mean_ms"] = total / count * 1e3 if count else 0.0
        report[f"reconcile_{scope}_ticks_since_first_start"] = count - count0
        report[f"reconcile_{scope}_seconds_since_first_start"] = total - total0
    report["reports_sent"] = sum(a.reports for a in bench.agents)


async def list_deployments(bench: Bench, *, page_size: int) -> None:
    """Every deployment, last, page by page (BASIC view: route counts, no per-node
    tables or reasons); then one page of the FULL view, for its size."""
    report = bench.report
    async with grpc.aio.insecure_channel(bench.address, options=BIG) as channel:
        stub = deployments_pb2_grpc.DeploymentsStub(channel)
        t = time.perf_counter()
        token, pages, size, started = "", 0, 0, 0
        while True:
            page = common_pb2.PageRequest(page_size=page_size, page_token=token)
            listing = await stub.ListDeployments(deployments_pb2.ListDeploymentsRequest(page=page), timeout=300)
            pages, size = pages + 1, size + listing.ByteSize()
            started += sum(a.route_counts.get("started", 0) for d in listing.deployments for a in d.allocations)
            token = listing.next_page_token
            if not token:
                break
        report["list_deployments_s"] = time.perf_counter() - t
        report["list_deployments_pages"] = pages
        report["list_deployments_mb"] = size / 1e6
        report["routing_entries_started"] = started
        full = await stub.ListDeployments(
            deployments_pb2.ListDeploymentsRequest(view=common_pb2.VIEW_FULL, page=common_pb2.PageRequest(page_size=100)),
            timeout=300,
        )
        report["list_full_view_100_mb"] = full.ByteSize() / 1e6
    report["peak_rss_after_list_mb"] = proc_stats(bench.cp.pid)["peak_rss_mb"]


async def shutdown(bench: Bench) -> None:
    for task in bench.tasks:
        task.cancel()
    await asyncio.gather(*bench.tasks, return_exceptions=True)
    for channel in bench.channels:
        await channel.close()
    bench.cp.terminate()
    try:
        bench.cp.wait(30)
    except subprocess.TimeoutExpired:
        bench.cp.kill()
    bench.log.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = launch(args)
    try:
        base = await wait_endpoints(bench)
        await connect_agents(bench, base)
        hist_before = await start_deployments(bench)
        await steady_state(bench, hist_before)
        await list_deployments(bench, page_size=args.page_size)
        bench.report["load_avg_end"] = os.getloadavg()[0]
    finally:
        await shutdown(bench)
    return bench.report


def main() -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/controlplane_scale.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--deployments", type=int, default=1000)
    p.add_argument("--node-cpus", type=float, default=4.0)
    p.add_argument("--start-concurrency", type=int, default=32, help="StartDeployment calls in flight")
    p.add_argument("--heartbeat", type=float, default=5.0, help="the control plane's heartbeat interval")
    p.add_argument("--steady", type=float, default=10.0, help="seconds of heartbeats-only CPU measurement")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--full-every", type=float, default=5.0, help="the control plane's --full-reconcile-every")
    p.add_argument("--page-size", type=int, default=100, help="ListDeployments page size (at most 1000)")
    p.add_argument("--workdir", default="")
    p.add_argument("--json", default="")
    args = p.parse_args()
    report = asyncio.run(run(args))
    print(f"\nmachine: {report['cores']} cores, load average {report['load_avg_start']:.2f} at start, "
          f"{report['load_avg_end']:.2f} at end")  # fmt: skip
    print("| measure | value |\n|---|---:|")
    for key, val in report.items():
        if key not in ("cores", "load_avg_start", "load_avg_end"):
            print(f"| {key} | {val:.3f} |" if isinstance(val, float) else f"| {key} | {val} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
