"""Records and a table of record kinds for the store tests (tests/unit/store/test_store.py,
tests/unit/store/test_store_sqlite.py).

Each builder makes a small record keyed by its leading argument(s) (a
model: id and version); records built with the same arguments are equal,
so a test can build again what it expects to read back. KINDS maps a
kind to (make, put, get, list) for the tests that run once per kind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, common_pb2, deployments_pb2, models_pb2

StoreFactory = Callable[[], Store]


# ---- record builders --------------------------------------------------------------
def model(model_id: str, version: int, *, description: str = "") -> models_pb2.Model:
    m = models_pb2.Model(
        model_id=model_id,
        version=version,
        format=common_pb2.MODEL_FORMAT_ONNX,
        model_bytes=1000 + version,
        sha256=hashlib.sha256(f"{model_id}:{version}".encode()).hexdigest(),
        state=common_pb2.MODEL_STATE_NORMAL,
        description=description,
    )
    m.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
    m.created_at.FromSeconds(1_700_000_000 + version)
    return m


def deployment(deployment_id: str, *, revision: int = 1) -> records_pb2.DeploymentRecord:
    r = records_pb2.DeploymentRecord(
        deployment_id=deployment_id,
        desired=records_pb2.DESIRED_STATE_RUNNING,
        owner="alice",
        revision=revision,
        status=common_pb2.DEPLOYMENT_STATUS_DEPLOYING,
    )
    r.spec.model_id = "m"
    r.spec.variants.add(name="m-v1", model_id="m", model_version=1, weight=100, env={"A": "1"})
    return r


def allocation(allocation_id: str, *, deployment_id: str = "d1", node_id: str = "n1") -> records_pb2.AllocationRecord:
    r = records_pb2.AllocationRecord(
        allocation_id=allocation_id,
        deployment_id=deployment_id,
        variant="m-v1",
        node_id=node_id,
        desired=records_pb2.DESIRED_STATE_RUNNING,
        routing_state=common_pb2.ROUTING_STATE_STARTING,
    )
    r.spec.CopyFrom(agent_pb2.AllocationSpec(allocation_id=allocation_id, deployment_id=deployment_id, model_id="m"))
    return r


def node(node_id: str, *, cpus: float = 8.0) -> records_pb2.NodeRecord:
    r = records_pb2.NodeRecord(schedulable=True, generation=3)
    r.info.node_id = node_id
    r.info.capacity.cpus = cpus
    r.info.labels["pool"] = "cpu"
    return r


def request(request_id: str, *, response: bytes = b"resp") -> records_pb2.RequestRecord:
    return records_pb2.RequestRecord(request_id=request_id, method="StartDeployment", response=response)


def event_log(deployment_id: str, *, events: int = 2) -> records_pb2.EventLogRecord:
    r = records_pb2.EventLogRecord(deployment_id=deployment_id, last_seq=events)
    for seq in range(1, events + 1):
        r.events.add(seq=seq, kind=deployments_pb2.EVENT_KIND_STATUS, reason=f"event {seq}")
    return r


def api_key(key_id: str, *, user: str = "alice") -> records_pb2.ApiKeyRecord:
    return records_pb2.ApiKeyRecord(
        key_id=key_id, user=user, roles=["viewer"], salt=b"\x01" * 16, secret_hash=b"\x02" * 32, hash_iterations=10
    )


# kind -> (make, put, get, list); every record built by make() has the same key
Kind = tuple[
    Callable[[], Any], Callable[[Store, Any], None], Callable[[Store], Any], Callable[[Store], list[Any]] | None
]
KINDS: dict[str, Kind] = {
    "model": (
        lambda: model("m", 1),
        lambda s, r: s.put_model(r),
        lambda s: s.get_model("m", 1),
        lambda s: s.list_models(),
    ),
    "deployment": (
        lambda: deployment("d1"),
        lambda s, r: s.put_deployment(r),
        lambda s: s.get_deployment("d1"),
        lambda s: s.list_deployments(),
    ),
    "allocation": (
        lambda: allocation("a1"),
        lambda s, r: s.put_allocation(r),
        lambda s: s.get_allocation("a1"),
        lambda s: s.list_allocations(),
    ),
    "node": (lambda: node("n1"), lambda s, r: s.put_node(r), lambda s: s.get_node("n1"), lambda s: s.list_nodes()),
    "request": (lambda: request("r1"), lambda s, r: s.put_request(r), lambda s: s.get_request("r1"), None),
    "event_log": (lambda: event_log("d1"), lambda s, r: s.put_event_log(r), lambda s: s.get_event_log("d1"), None),
    "api_key": (
        lambda: api_key("k1"),
        lambda s, r: s.put_api_key(r),
        lambda s: s.get_api_key("k1"),
        lambda s: s.list_api_keys(),
    ),
}
