"""Smoke tests of the benchmark scripts (docs/benchmarks.md): their quickest
paths run end to end and write JSON with a figure for every point. No speed
is asserted here: targets live in the benchmarks, never in tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cluster import ROOT


def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def test_serving_benchmark_quick_path(tmp_path: Path) -> None:
    report_file = tmp_path / "serving.json"
    out = run(
        ["benchmarks/serving.py", "--quick", "--models", "mlp", "--concurrency", "2", "--batched-concurrency", "2",
         "--duration", "0.3", "--warmup", "0.1", "--rounds", "2", "--workdir", str(tmp_path / "work"),
         "--json", str(report_file)],
        timeout=120,
    )  # fmt: skip
    report = json.loads(report_file.read_text())
    paths = {r["path"]: r for r in report["results"]}
    assert set(paths) == {
        "raw", "reference", "direct", "gateway", "stream-direct", "stream-gateway", "batched-direct", "batched-gateway",
    }  # fmt: skip
    # every path measured once per round; the tables show one median row per path
    assert sorted(r["round"] for r in report["results"] if r["path"] == "direct") == [0, 1]
    batching, streaming = out.stdout.split("\nDynamic batching (")[1].split("\nModelStreamInfer (")
    for table in (batching, streaming):
        rows = [line for line in table.splitlines() if line.startswith(("| direct | 2 |", "| gateway | 2 |"))]
        assert len(rows) == 2, out.stdout
    for row in report["results"]:
        assert row["count"] > 0 and row["errors"] == 0, row
        assert row["p99_ms"] >= row["p50_ms"] > 0
    assert report["machine_at_start"]["cores"] >= 1
    assert "| conc | raw req/s |" in out.stdout and "b/a" in out.stdout and "cores" in out.stdout


def test_control_plane_scale_benchmark_small(tmp_path: Path) -> None:
    report_file = tmp_path / "scale.json"
    run(
        ["benchmarks/controlplane_scale.py", "--nodes", "20", "--deployments", "20", "--steady", "0.5",
         "--full-every", "0.5", "--workdir", str(tmp_path / "work"), "--json", str(report_file)],
        timeout=120,
    )  # fmt: skip
    report = json.loads(report_file.read_text())
    assert report["deployments_with_a_started_route"] == 20
    assert report["routing_entries_started"] == 20
    assert report["reports_sent"] >= 20 and report["rss_mb"] > 0
    assert report["reconcile_scoped_ticks"] > 0


def test_gateway_tier_benchmark_small(tmp_path: Path) -> None:
    report_file = tmp_path / "gateway_tier.json"
    out = run(
        ["benchmarks/gateway_tier.py", "--concurrency", "2", "--duration", "0.3", "--warmup", "0.1", "--rounds", "1",
         "--proxy-channels", "1,2", "--workdir", str(tmp_path / "work"), "--json", str(report_file)],
        timeout=180,
    )  # fmt: skip
    report = json.loads(report_file.read_text())
    assert {r["path"] for r in report["results"]} == {"proxy-ch1", "proxy-ch2", "gateway-x1", "gateway-x2"}
    for row in report["results"]:
        assert row["count"] > 0 and row["errors"] == 0, row
        assert row["server_us"] > 0 and row["worker_us"] > 0 and row["cp_us"] >= 0, row
    point = report["summary"]["2"]
    assert point["best_proxy"] in ("proxy-ch1", "proxy-ch2")
    assert point["gateway-x1"]["cpu_vs_proxy"] > 0 and point["x2_vs_x1_rps"] > 0
    assert sum(point["gateway-x2"]["process_shares"]) > 0.9  # the 2-process gateway's /metrics counted the calls
    assert "| conc | proxy (best) req/s |" in out.stdout and "gw ×1 ÷ proxy" in out.stdout and "target ≤ 1.3" in out.stdout


def test_rest_vs_grpc_benchmark_tiny(tmp_path: Path) -> None:
    report_file = tmp_path / "rest.json"
    out = run(["benchmarks/rest_vs_grpc.py", "--calls", "30", "--rounds", "1", "--concurrency", "2",
               "--workdir", str(tmp_path / "work"), "--json", str(report_file)], timeout=180)  # fmt: skip
    report = json.loads(report_file.read_text())
    assert {r["path"] for r in report["results"]} == {"grpc", "rest"}
    assert all(r["errors"] == 0 and r["req_per_s"] > 0 for r in report["results"]), report["results"]
    assert "REST/gRPC gateway CPU per call" in out.stdout and "| round | path |" in out.stdout
