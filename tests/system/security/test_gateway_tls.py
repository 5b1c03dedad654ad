"""A standalone gateway in a TLS fleet, through real processes: it follows the
routes watch of a control plane that demands client certificates (mTLS),
serves TLS with mTLS itself, and reaches mTLS workers trusting
`--worker-tls-ca`. Plaintext and certificate-less clients are refused at
the handshake; the right one gets its answer."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from certs import make_pki
from cluster import Cluster, authed_channel, wait_until
from gatewayproc import start_gateway
from modelbuild import ADD_CONSTANT, onnx_add

from modelfleet.inference import grpc_service_pb2 as v2
from modelfleet.inference import grpc_service_pb2_grpc as v2_grpc
from modelfleet.v1 import deployments_pb2 as dpb


def _credentials(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes() if key else None, cert.read_bytes() if cert else None)


def _infer(address: str, token: str, credentials: grpc.ChannelCredentials | None) -> np.ndarray:
    req = v2.ModelInferRequest(model_name="add")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    if credentials is None:
        with grpc.insecure_channel(address) as channel:
            reply = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=5)
    else:
        with authed_channel(address, token, credentials=credentials) as channel:
            reply = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)
    return np.frombuffer(reply.raw_output_contents[0], np.float32)


def test_a_standalone_gateway_in_an_mtls_fleet(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    good = _credentials(pki.ca, pki.client.cert, pki.client.key)
    c = Cluster(tmp_path / "fleet", credentials=good)
    gw = None
    try:
        server = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key), "--tls-client-ca", str(pki.ca)]
        c.start_control_plane(extra_args=[*server, "--worker-tls-ca", str(pki.ca)])
        c.start_agent("node-a", extra_args=[
            "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key),
            "--worker-tls-cert", str(pki.server.cert), "--worker-tls-key", str(pki.server.key),
            "--worker-tls-client-ca", str(pki.ca),
        ])  # fmt: skip
        c.wait_nodes(1)
        c.upload(onnx_add(tmp_path / "add.onnx"), "add")
        req = dpb.StartDeploymentRequest(model_id="add", wait_for=dpb.WAIT_FOR_STARTED)
        req.timeout.FromSeconds(60)
        c.deployments.StartDeployment(req, timeout=90)
        gw = start_gateway(c, "tls", extra_args=(*server, "--tls-ca", str(pki.ca), "--worker-tls-ca", str(pki.ca)))
        token = c.create_key("inference", name="tls caller").token

        def answered() -> bool:
            try:
                return bool(np.array_equal(_infer(gw.address, token, good), np.ones(4, np.float32) + ADD_CONSTANT))
            except grpc.RpcError:
                return False

        wait_until(answered, timeout=30, what="the TLS gateway to answer")
        for refused in (None, _credentials(pki.ca)):  # plaintext; TLS without a client certificate
            with pytest.raises(grpc.RpcError) as err:
                _infer(gw.address, token, refused)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if gw is not None:
            gw.stop()
        c.close()
