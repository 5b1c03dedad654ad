"""Scenario 17, TLS and mTLS through real processes, with certificates made
on the fly (tests/certs.py).

One fleet: the control plane serves TLS and demands client certificates
(`--tls-client-ca`); the agent joins with its client certificate and its
API key; workers serve TLS with mTLS, and the gateway reaches them trusting
`--worker-tls-ca` and presenting its own certificate. Plaintext clients,
clients without a certificate and clients with an untrusted one are refused
at the handshake (UNAVAILABLE); the right one works, the CLI included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from certs import make_pki
from cluster import ROOT, Cluster, authed_channel
from grpc_health.v1 import health_pb2, health_pb2_grpc
from modelbuild import onnx_add

from modelfleet.inference import grpc_service_pb2 as v2
from modelfleet.inference import grpc_service_pb2_grpc as v2_grpc
from modelfleet.v1 import auth_pb2, auth_pb2_grpc
from modelfleet.v1 import deployments_pb2 as dpb


def _credentials(ca: Path, pair: object = None) -> grpc.ChannelCredentials:
    cert = getattr(pair, "cert", None)
    key = getattr(pair, "key", None)
    return grpc.ssl_channel_credentials(
        ca.read_bytes(), key.read_bytes() if key else None, cert.read_bytes() if cert else None
    )


def _health(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """SERVING, or the status code name of the failure."""
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_scenario_17_tls_and_mtls_for_control_plane_agent_workers_and_cli(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    good = _credentials(pki.ca, pki.client)
    c = Cluster(tmp_path / "fleet", credentials=good)
    try:
        c.start_control_plane(extra_args=[
            "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), "--tls-client-ca", str(pki.ca),
            "--worker-tls-ca", str(pki.ca),
        ])  # fmt: skip
        # the handshake decides: plaintext, no client certificate, an untrusted one, an untrusted server
        outcomes = {
            "plaintext": _health(c.addr, None),
            "tls without a client certificate": _health(c.addr, _credentials(pki.ca)),
            "untrusted client certificate": _health(c.addr, _credentials(pki.ca, pki.rogue_client)),
            "server not trusted by the client": _health(c.addr, _credentials(pki.rogue_ca, pki.client)),
            "trusted client certificate": _health(c.addr, good),
        }
        print("scenario 17:", outcomes)
        assert outcomes == {
            "plaintext": "UNAVAILABLE",
            "tls without a client certificate": "UNAVAILABLE",
            "untrusted client certificate": "UNAVAILABLE",
            "server not trusted by the client": "UNAVAILABLE",
            "trusted client certificate": "SERVING",
        }
        # TLS does not replace the API key: both are needed
        with authed_channel(c.addr, "", credentials=good) as channel:
            with pytest.raises(grpc.RpcError) as err:
                auth_pb2_grpc.AuthStub(channel).WhoAmI(auth_pb2.WhoAmIRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the CLI with --tls-ca and a client certificate
        cli = subprocess.run(
            [sys.executable, "-m", "modelfleet.cli.main", "--addr", c.addr, "--tls-ca", str(pki.ca),
             "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key), "keys", "whoami"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "MODELFLEET_TOKEN": c.token},
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert "manage_security" in cli.stdout
        plain = subprocess.run(
            [sys.executable, "-m", "modelfleet.cli.main", "--addr", c.addr, "keys", "whoami"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "MODELFLEET_TOKEN": c.token},
        )  # fmt: skip
        assert plain.returncode == 1 and plain.stderr.startswith("error: UNAVAILABLE")
        # an agent over mTLS, with TLS workers that demand client certificates too
        c.start_agent("node-a", extra_args=[
            "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key),
            "--worker-tls-cert", str(pki.server.cert), "--worker-tls-key", str(pki.server.key),
            "--worker-tls-client-ca", str(pki.ca),
        ])  # fmt: skip
        c.wait_nodes(1)
        c.upload(onnx_add(tmp_path / "add.onnx"), "add")
        req = dpb.StartDeploymentRequest(model_id="add", wait_for=dpb.WAIT_FOR_STARTED)
        req.timeout.FromSeconds(60)
        (entry,) = c.deployments.StartDeployment(req, timeout=90).allocation.routing_table.values()
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        infer = v2.ModelInferRequest(model_name="add")
        infer.inputs.add(name="x", datatype="FP32", shape=[2, 4])
        infer.raw_input_contents.append(x.tobytes())
        expected = (x + np.array([1, 2, 3, 4], np.float32)).tobytes()
        # through the gateway (TLS to the control plane, TLS + worker token to the worker)
        reply = v2_grpc.GRPCInferenceServiceStub(c.channel).ModelInfer(infer, timeout=30)
        assert reply.raw_output_contents[0] == expected
        # straight to the worker: TLS with a client certificate and a key with infer
        with authed_channel(entry.worker_address, c.token, credentials=good) as channel:
            direct = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer, timeout=30)
            assert direct.raw_output_contents[0] == expected
        assert _health(entry.worker_address, None) == "UNAVAILABLE"
        assert _health(entry.worker_address, _credentials(pki.ca)) == "UNAVAILABLE"
        assert _health(entry.worker_address, _credentials(pki.ca, pki.rogue_client)) == "UNAVAILABLE"
        assert _health(entry.worker_address, good) == "SERVING"
    finally:
        c.close()
