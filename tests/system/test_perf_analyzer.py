"""Triton's own perf_analyzer (the binary inside the tritonclient 2.41.0
wheel) measures a modelfleet deployment through the gateway and directly at
a worker, with an API key header, as it would measure Triton.

It needs Debian's libb64-0d (.ci/run installs it) and libcudart.so.12 from
the nvidia-cuda-runtime-cu12 wheel on LD_LIBRARY_PATH (both in the `test`
extra); it reads ModelMetadata, ModelConfig and ModelStatistics before it
sends a single inference, so a run that measures proves those are Triton's.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster
from modelbuild import onnx_add

from modelfleet.v1 import deployments_pb2 as dpb

PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"
CUDART = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cuda_runtime" / "lib"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("perf")
    c = Cluster(root, heartbeat=0.5, node_timeout=10)
    try:
        c.start_control_plane()
        c.start_agent("node-a", cpus=4)
        c.wait_nodes(1)
        c.upload(onnx_add(root / "add1.onnx"), "add")
        c.upload(onnx_add(root / "add2.onnx", constant=[10, 20, 30, 40]), "add")
        req = dpb.StartDeploymentRequest(
            deployment_id="scorer",
            variants=[
                dpb.VariantSpec(model_id="add", model_version=1, weight=100, instances=1),
                dpb.VariantSpec(model_id="add", model_version=2, weight=0, instances=1, max_batch_size=8, max_queue_delay_us=200),
            ],
            wait_for=dpb.WAIT_FOR_FULLY_ALLOCATED,
        )
        req.timeout.FromSeconds(60)
        c.deployments.StartDeployment(req, timeout=90)
        yield c
    finally:
        c.close()


def perf_analyzer(address: str, token: str, tmp: Path, *extra: str) -> tuple[str, dict[str, str]]:
    """Run perf_analyzer for a few short windows; (its output, the CSV row it measured)."""
    assert PERF_ANALYZER.exists(), f"{PERF_ANALYZER} is missing: pip install -e '.[test]' (tritonclient[grpc]==2.41.0)"
    report = tmp / "report.csv"
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(p for p in (str(CUDART), os.environ.get("LD_LIBRARY_PATH", "")) if p)}
    cmd = [
        str(PERF_ANALYZER), "-m", "scorer", "-i", "grpc", "-u", address, "-H", f"authorization:Bearer {token}",
        "--shape", "x:1,4", "--concurrency-range", "2", "--measurement-interval", "500",
        "--stability-percentage", "1000", "--max-trials", "4", "-f", str(report), *extra,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    (row,) = list(csv.DictReader(report.open()))
    return output, row


@pytest.mark.parametrize("target", ["gateway", "worker"])
def test_perf_analyzer_measures_through_the_gateway_and_at_a_worker(cluster: Cluster, target: str, tmp_path: Path) -> None:
    if target == "gateway":
        address = cluster.addr
    else:
        alloc = cluster.get("scorer").allocations[0]
        address = next(iter(alloc.routing_table.values())).worker_address
    output, row = perf_analyzer(address, cluster.token, tmp_path)
    print(f"perf_analyzer against the {target} ({address}):\n{output}")
    assert float(row["Inferences/Second"]) > 0, row
    assert "error" not in output.lower(), output
    assert "Throughput:" in output and "Avg latency:" in output, output
    # its server-side figures come from our ModelStatistics breakdown
    assert "Server:" in output and "compute infer" in output, output


def test_perf_analyzer_names_model_version_2_and_batches_through_the_gateway(cluster: Cluster, tmp_path: Path) -> None:
    """-x 2 as Triton clients name a version; v2 batches (max_batch_size 8), so its config leaves
    the batch dimension out and perf_analyzer sends batches of 4 rows (-b 4, shape x:4)."""
    output, row = perf_analyzer(cluster.addr, cluster.token, tmp_path, "-x", "2", "-b", "4")
    print(f"perf_analyzer -x 2 -b 4 against the gateway:\n{output}")
    assert float(row["Inferences/Second"]) > 0, row
    assert "Batch size: 4" in output and "error" not in output.lower(), output
    # as in Triton, the server counts inferences (4 rows a request) apart from requests
    inferences = int(re.search(r"Inference count: (\d+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"Successful request count: (\d+)", output).group(1))  # type: ignore[union-attr]
    assert requests > 0 and inferences == 4 * requests, output
