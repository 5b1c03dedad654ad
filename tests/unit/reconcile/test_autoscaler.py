"""Unit tests of the autoscaler's loop (control_plane.reconcile.autoscaler) with the reconcile room's
fake world: heartbeat stats recorded in the fleet, a fake clock, the in-memory store; no sockets."""

from __future__ import annotations

from reconcile_world import RUNNING, STOPPED, ReconcileWorld, S, model

from control_plane.deployments.views import deployment_view, stats_view
from control_plane.planning import planner
from control_plane.reconcile.autoscaler import Autoscaler
from control_plane.reconcile.reconciler import now_ts
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, common_pb2, deployments_pb2


class World(ReconcileWorld):
    def __init__(self, nodes: int = 3) -> None:
        super().__init__(wall=1000.0, models=[model(1, sha256="ab" * 32)])
        for i in range(nodes):
            self.join(f"n{i}")
        self.scaler = Autoscaler(
            store=self.store, fleet=self.fleet, views=self.rec.views, events=self.rec.events,
            reconcile=self.rec.reconcile, now_ts=self.rec.now, clock=self.clock,
        )

    def deploy(self, *, low: int = 1, high: int = 3, target: float = 2.0, up_s: float = 2.0, down_s: float = 3.0) -> None:
        spec = deployments_pb2.StartDeploymentRequest(deployment_id="d")
        v = spec.variants.add(name="m-v1", model_id="m", model_version=1, weight=100, inference_threads=1, model_threads=1, queue_capacity=8)
        v.autoscaling.enabled = True
        v.autoscaling.min_allocations, v.autoscaling.max_allocations = low, high
        v.autoscaling.target_in_flight_per_allocation = target
        v.autoscaling.upscale_delay.FromNanoseconds(int(up_s * 1e9))
        v.autoscaling.downscale_delay.FromNanoseconds(int(down_s * 1e9))
        self.store.put_deployment(records_pb2.DeploymentRecord(deployment_id="d", spec=spec, desired=RUNNING, start_time=now_ts(), revision=1))
        self.rec.reconcile()

    def wanted(self) -> list[records_pb2.AllocationRecord]:
        return [a for a in self.store.list_allocations(deployment_id="d") if a.desired == RUNNING]

    def start_all(self) -> None:
        for a in self.wanted():
            if a.routing_state != S.ROUTING_STATE_STARTED:
                node = self.store.get_node(a.node_id)
                reports = [agent_pb2.AllocationReport(allocation_id=x.allocation_id, deployment_id="d", routing_state=S.ROUTING_STATE_STARTED,
                                                      worker_address=f"{a.node_id}:1")
                           for x in self.store.list_allocations(node_id=a.node_id) if x.desired == RUNNING]
                self.rec.agents.observe(a.node_id, reports, applied_generation=node.generation)

    def load(self, per: float, *, seconds: int) -> None:
        """Every started allocation reports `per` calls in flight once a second (a heartbeat), then the autoscaler samples."""
        for _ in range(seconds):
            for a in self.wanted():
                self.fleet.record_stats(a.node_id, [agent_pb2.AllocationStats(
                    allocation_id=a.allocation_id, stats=common_pb2.InferenceStats(number_of_pending_requests=int(per)))])
            self.scaler.step()
            self.clock.now += 1.0
            self.start_all()

    def scale_events(self) -> list[deployments_pb2.DeploymentEvent]:
        return [e for e in self.rec.events.since("d") if e.kind == deployments_pb2.EVENT_KIND_SCALE]


def test_load_grows_the_allocations_with_an_event_and_shrinks_them_again() -> None:
    w = World()
    w.deploy()
    w.start_all()
    assert len(w.wanted()) == 1  # min_allocations
    w.load(5, seconds=2)
    assert len(w.wanted()) == 1  # above the target, not yet for 2 s
    w.load(5, seconds=1)
    assert len(w.wanted()) == 3  # ceil(5 / 2), at most max 3
    (up,) = w.scale_events()
    assert (up.variant, up.from_allocations, up.allocations) == ("m-v1", 1, 3)
    assert up.reason == "in-flight 5.0 per allocation > target 2 for 2 s: 1 → 3"
    status = deployment_view(w.store.get_deployment("d"), reads=w.rec.reads).allocations[0].autoscaling
    assert (status.current, status.target, status.min_allocations, status.max_allocations) == (3, 3, 1, 3)
    assert status.reason == up.reason
    (scale,) = stats_view(w.store.get_deployment("d"), reads=w.rec.reads).variants
    assert (scale.variant, scale.autoscaling.target) == ("m-v1", 3)
    w.load(2, seconds=30)  # at the target: steady
    assert len(w.scale_events()) == 1
    w.load(0, seconds=5)
    assert len(w.wanted()) == 2
    stopped = [a for a in w.store.list_allocations(deployment_id="d") if a.desired == STOPPED]
    assert [a.reason for a in stopped] == [planner.SCALED_DOWN] and stopped[0].routing_state == S.ROUTING_STATE_STOPPING
    w.load(0, seconds=30)
    assert len(w.wanted()) == 1
    assert [e.allocations for e in w.scale_events()] == [3, 2, 1]


def test_capacity_bounds_the_step_up() -> None:
    w = World(nodes=2)
    w.deploy(high=3)
    w.start_all()
    w.load(50, seconds=10)
    assert len(w.wanted()) == 2 and [e.allocations for e in w.scale_events()] == [2]


def test_an_update_of_the_spec_meanwhile_wins() -> None:
    w = World()
    w.deploy()
    w.start_all()
    w.load(5, seconds=2)
    rec = w.store.get_deployment("d")
    rec.spec.variants[0].autoscaling.max_allocations = 2
    rec.revision += 1
    w.store.put_deployment(rec)
    w.rec.reconcile()
    w.load(5, seconds=3)
    assert len(w.wanted()) == 2
