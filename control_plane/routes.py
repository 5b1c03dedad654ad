"""What the gateway reads about deployments and their workers: the `Route`
of a started worker and the `RouteSource` protocol.

The gateway (control_plane.gateway) depends on this protocol only, so the
same data can come from the control plane's reconcile components
(control_plane.reconcile.source) or, later, from a watch stream feeding a
standalone gateway process: deployments (variants, weights, traffic limits),
started workers with their addresses and worker tokens, and model tensor
specs. Implementations are read on the gateway's event loop and must not
block.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import common_pb2, models_pb2


@dataclass(frozen=True)
class Route:
    """A started worker the gateway may send calls to."""

    allocation_id: str
    node_id: str
    variant: str
    address: str
    token: str = ""  # the worker token the gateway presents ("" = auth off)
    model: tuple[str, int] = ("", 0)  # (model_id, version) the worker serves: what requests are checked against


class RouteSource(Protocol):
    """The gateway's view of deployments and their started workers."""

    def routes(self, deployment_id: str) -> Sequence[Route]:
        """The started workers of the deployment that may take calls (empty: none)."""
        ...

    def live_addresses(self) -> set[str]:
        """The address of every route of every deployment (channels to others may close)."""
        ...

    def version(self, deployment_id: str) -> int:
        """A number that changes whenever the deployment's record may have changed (for caches)."""
        ...

    def deployment(self, deployment_id: str) -> records_pb2.DeploymentRecord | None:
        """The deployment's record (spec: variants, weights, traffic limit), or None if unknown."""
        ...

    def deployments(self) -> list[records_pb2.DeploymentRecord]:
        """Every deployment's record."""
        ...

    def model(self, model_id: str, version: int) -> models_pb2.Model | None:
        """The model version's record (format, input and output tensor specs), or None."""
        ...

    def worker_stats(self, deployment_id: str, variant: str) -> Iterable[common_pb2.InferenceStats]:
        """The latest inference statistics reported by each worker of the variant."""
        ...
