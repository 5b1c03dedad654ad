"""`modelfleet health`: the grpc.health.v1 status of a server (control plane,
standalone gateway or worker), exit 0 only when SERVING.

A probe command for orchestrators: it honours the CLI's TLS flags
(`--tls-ca`, `--tls-server-name`, mTLS `--tls-cert/--tls-key`), which a
Kubernetes `grpc:` probe cannot, and needs no API key (health is public).
"""

from __future__ import annotations

import argparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelfleet.cli.client import Client


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("health", help="a server's health (exit 0 when SERVING): a probe that works with TLS",
                       parents=parents)
    p.add_argument("--service", default="", help="the service to ask about (default '': the server as a whole)")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S", help="give up after S seconds (default 3)")
    p.set_defaults(func=health)


def health(args: argparse.Namespace, client: Client) -> int:
    stub = health_pb2_grpc.HealthStub(client.channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as err:
        print(f"{args.addr}: {err.code().name}: {err.details()}")
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.addr}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
