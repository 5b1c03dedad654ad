"""The REST API against its own OpenAPI document, by schemathesis (property-based): every route of
/openapi.json is called with generated inputs, valid and not; no answer may be a server error or break
the schema the document declares (status codes, content types, bodies)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cluster import Cluster

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_every_route_keeps_the_openapi_contract_under_generated_inputs(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.start_control_plane(extra_args=["--http-listen", "127.0.0.1:0"])
        endpoint = cluster.rest_endpoint()
        run = subprocess.run(
            [str(SCHEMATHESIS), "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run", f"http://{endpoint}/openapi.json", "--checks", "all",
             "--header", f"Authorization: Bearer {cluster.token}", "--max-examples", "20",
             "--generation-deterministic", "--request-timeout", "20", "--no-color"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        cluster.close()
    summary = run.stdout[-4000:]
    assert run.returncode == 0, summary + run.stderr[-2000:]
    assert "Tested: " in summary and "generated" in summary, summary
