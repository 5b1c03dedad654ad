"""Services and methods as a server really serves them, from its reflection
service and the protobuf descriptors (tests enumerate RPCs from these, never
from a hand-written list)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

POOL = descriptor_pool.Default()


def served_services(address: str) -> list[str]:
    """The services the server itself lists through reflection (no credentials needed)."""
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        return sorted(s.name for s in reply.list_services_response.service)


def methods_of(services: list[str]) -> list[tuple[Any, Any]]:
    return [(POOL.FindServiceByName(name), m) for name in services for m in POOL.FindServiceByName(name).methods]


def full_name(service: Any, method: Any) -> str:
    return f"/{service.full_name}/{method.name}"
