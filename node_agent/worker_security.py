"""How the agent secures its inference workers: the worker token, the key
verifiers, TLS — everything a worker's command line and the agent's own
channel to it need, in one place (with `declared_specs` and `batching_flags`,
the rest of the command line that comes from the allocation's spec).

Who may call a worker (docs/security.md, "Workers"):
- the control plane's gateway and this agent, presenting the allocation's
  worker token (a secret the control plane puts in AllocationSpec; the agent
  writes it to DIR/workers/<allocation>.token, mode 0600, for the worker);
- a client presenting an API key with the `infer` privilege: the worker
  checks it against the verifiers (salted hashes, never secrets) the control
  plane sends on the agent stream, which the agent keeps in
  DIR/workers/credentials.pb (mode 0600) and the worker rereads when it changes.
An allocation without a worker token (the control plane runs with --auth off)
starts its worker without either file: the worker then accepts any caller.

TLS: with --worker-tls-cert/--worker-tls-key the agent starts workers serving
TLS (and mTLS with --worker-tls-client-ca); the agent's own calls to them
(health, statistics) trust --worker-tls-ca (default: --tls-ca) and present
the agent's client certificate.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from modelfleet.v1 import agent_pb2, common_pb2


def read_pem(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def write_private(path: Path, data: bytes) -> None:
    """Write data atomically with mode 0600 (created so, never wider)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class WorkerSecurity:
    """TLS settings for workers (PEM file paths; "" = unset) and the message size limit."""

    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # workers demand client certificates (mTLS)
    tls_ca: str = ""  # what the agent trusts when it calls a TLS worker
    client_cert: str = ""  # the agent's certificate, for workers with mTLS
    client_key: str = ""
    max_message_bytes: int = 0  # 0 = the worker's default

    def argv(self, spec: agent_pb2.AllocationSpec, *, token_file: Path, credentials_file: Path) -> list[str]:
        """The worker's security arguments for spec."""
        out: list[str] = []
        if spec.worker_token:
            out += ["--token-file", str(token_file), "--credentials-file", str(credentials_file)]
        if self.tls_cert:
            out += ["--tls-cert", self.tls_cert, "--tls-key", self.tls_key]
            if self.tls_client_ca:
                out += ["--tls-client-ca", self.tls_client_ca]
        if self.max_message_bytes:
            out += ["--max-message-bytes", str(self.max_message_bytes)]
        return out

    def channel(self, address: str) -> grpc.aio.Channel:
        """The agent's channel to one of its workers."""
        if not self.tls_cert:
            return grpc.aio.insecure_channel(address)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.tls_ca) if self.tls_ca else read_pem(self.tls_cert),
            private_key=read_pem(self.client_key) if self.client_key else None,
            certificate_chain=read_pem(self.client_cert) if self.client_cert else None,
        )
        return grpc.aio.secure_channel(address, credentials)


def declared_specs(spec: agent_pb2.AllocationSpec) -> list[str]:
    """TorchScript keeps no datatypes: the worker serves the specs the registry validated."""
    if spec.format != common_pb2.MODEL_FORMAT_TORCHSCRIPT or not spec.inputs:
        return []

    def as_json(specs: Any) -> str:
        return json.dumps([{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs])

    argv = ["--inputs-json", as_json(spec.inputs)]
    if spec.outputs:
        argv += ["--outputs-json", as_json(spec.outputs)]
    return argv


def batching_flags(spec: agent_pb2.AllocationSpec) -> list[str]:
    """Dynamic batching flags, when the variant asks for it."""
    if spec.max_batch_size <= 0:
        return []
    return ["--max-batch-size", str(spec.max_batch_size), "--max-queue-delay-us", str(max(0, spec.max_queue_delay_us))]


def token_metadata(spec: agent_pb2.AllocationSpec) -> tuple[tuple[str, str], ...] | None:
    """The agent's credentials for WorkerControl calls to spec's worker."""
    return (("authorization", f"Bearer {spec.worker_token}"),) if spec.worker_token else None
