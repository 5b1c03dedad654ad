"""The unit-test world of the reconcile room shared by test_reconciler.py and
test_lifecycle.py: fake clocks, the in-memory store, the fleet, the change
hub and a Reconciler, with agent sessions whose outboxes a test reads."""

from __future__ import annotations

from control_plane.fleet.liveness import Fleet
from control_plane.reconcile.hub import ChangeHub
from control_plane.reconcile.reconciler import Reconciler, now_ts
from control_plane.store.memory import MemoryStore
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, common_pb2, models_pb2

RUNNING = records_pb2.DESIRED_STATE_RUNNING
STOPPED = records_pb2.DESIRED_STATE_STOPPED
S = common_pb2


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def model(version: int, *, sha256: str) -> models_pb2.Model:
    return models_pb2.Model(model_id="m", version=version, format=S.MODEL_FORMAT_ONNX, model_bytes=1000, sha256=sha256,
                            state=S.MODEL_STATE_NORMAL)


class ReconcileWorld:
    """store + fleet + hub + Reconciler; nodes join through a fake agent session."""

    def __init__(self, *, wall: float, models: list[models_pb2.Model]) -> None:
        self.clock = Clock()
        self.wall = Clock(wall)
        self.store = MemoryStore()
        self.fleet = Fleet(heartbeat_interval=0.2, node_timeout=1.0, clock=self.clock)
        self.rec = Reconciler(store=self.store, fleet=self.fleet, hub=ChangeHub(), clock=self.clock, wall_clock=self.wall)
        for m in models:
            self.store.put_model(m)
        self.sessions: dict[str, object] = {}

    def join(self, node_id: str, cpus: float = 4) -> None:
        info = agent_pb2.NodeInfo(node_id=node_id, capacity=common_pb2.NodeCapacity(cpus=cpus, memory_bytes=8 << 30))
        if self.store.get_node(node_id) is None:
            self.store.put_node(records_pb2.NodeRecord(info=info, schedulable=True, registered_at=now_ts()))
        self.sessions[node_id] = self.fleet.attach(node_id)
        self.rec.agents.observe(node_id, [], applied_generation=0, full_registration=True)
