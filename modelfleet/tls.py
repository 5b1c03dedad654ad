"""TLS credentials from PEM files, for the servers and clients of the control
plane and the standalone gateway (the flags: --tls-cert/--tls-key to serve,
--tls-client-ca for mTLS, a CA to trust). Unreadable files end the program
with one line naming them."""

from __future__ import annotations

import grpc


def read_pem(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror}") from None


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS from PEM files; with client_ca, clients must present a certificate it signed (mTLS)."""
    root = read_pem(client_ca) if client_ca else None
    return grpc.ssl_server_credentials([(read_pem(key), read_pem(cert))], root_certificates=root, require_client_auth=root is not None)


def channel_credentials(ca: str = "", cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """TLS for a client: trust ca (default: the system roots); cert/key = a client certificate for mTLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca) if ca else None,
        private_key=read_pem(key) if key else None,
        certificate_chain=read_pem(cert) if cert else None,
    )
