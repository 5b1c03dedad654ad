"""What the API's read models (control_plane.deployments.views) and the dry-run
preview read of the reconcile room, travelling together: the store, the
fleet's liveness and statistics, the cached node views, and the last
placements and rolling-update reasons the Reconciler planned (shared by
reference, read only here). Event-loop only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from control_plane.fleet.liveness import Fleet
from control_plane.fleet.nodeviews import NodeViews
from control_plane.planning import scheduler
from control_plane.store import Store
from modelfleet.v1 import deployments_pb2, models_pb2


@dataclass(frozen=True)
class ReconcileReads:
    """Read-only access to the reconcile room's state (see the module docstring)."""

    store: Store
    fleet: Fleet
    nodes: NodeViews
    placements: Mapping[tuple[str, str], scheduler.Placement]  # (deployment_id, variant) -> the last placement
    rollouts: Mapping[str, str]  # deployment_id -> what its rolling update waits for

    def model_for(self, variant: deployments_pb2.VariantSpec) -> models_pb2.Model | None:
        return self.store.get_model(variant.model_id, variant.model_version)

    def node_views(self) -> dict[str, scheduler.NodeView]:
        """A copy of the cached node views (see Reconciler.node_views)."""
        return dict(self.nodes.get())

    def cordoned(self) -> frozenset[str]:
        return self.nodes.cordoned()
