"""Placement: which nodes hold a variant, and why every other node does not.

Pure functions over immutable views, no I/O and no clock, so the reconciler
can call `place` on every tick and the tests can drive it table by table.

Capacity model (DESIGN.md "Capacity"): an allocation of a variant on a node
needs `Demand.cpus` CPUs (resources.cpus, else inference_threads ×
model_threads), `Demand.memory_bytes` (resources.memory_bytes, else the
estimate 2 × model_bytes + 64 MiB: the model file is read once and the runtime
holds a second, converted copy of the weights, plus a fixed allowance for the
runtime, threads and the serving process) and `Demand.gpus`. A node offers
its capacity; `used_*` already counts every allocation placed on it,
including this variant's own allocation on the nodes in `current`.

Rules of `place`:
- A node in `current` stays a target while it is in `nodes` and ready; its
  fit is not checked again (it is already counted in `used_*`) and a cordoned
  node keeps what it has: draining is the caller's decision, not a placement.
- Any other node is eligible when it is ready, schedulable, in the demand's
  pool (demand.pool empty, or labels["pool"] equal to it) and has free
  capacity (capacity − used) of at least the demand in cpus, memory and gpus.
- instances == 0: every kept and every eligible node (Elasticsearch: a model
  attempts allocation to every eligible node).
- instances == N: the kept nodes first (at most N: schedulable before
  cordoned, then by node_id), then eligible nodes by most free CPUs, ties by
  node_id, until there are N.
- Targets are ordered: kept nodes, then added nodes in the order chosen.
- Every node of `nodes` that is not a target gets a reason in `not_chosen`.
- `shortfall` is set only when no node of `nodes`, whatever its state or
  load, could ever hold the demand by total capacity and pool: the
  RESOURCE_EXHAUSTED "no node could ever fit the request" case.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from control_plane.planning import reasons
from modelfleet.v1 import agent_pb2, deployments_pb2

MIB = 1024 * 1024
MEMORY_OVERHEAD_BYTES = 64 * MIB
MODEL_MEMORY_FACTOR = 2

# CPU counts are floats (0.5 cpu); compare with a tolerance so that
# 8 - (0.1 + 0.2 + ...) rounding never refuses an exact fit.
_EPSILON = 1e-9


@dataclass(frozen=True, kw_only=True)
class NodeView:
    """A node as the scheduler sees it: capacity, state and what is used."""

    node_id: str
    cpus: float
    memory_bytes: int
    gpus: int
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    schedulable: bool = True
    used_cpus: float = 0.0
    used_memory: int = 0
    used_gpus: int = 0

    @property
    def free_cpus(self) -> float:
        return self.cpus - self.used_cpus

    @property
    def free_memory(self) -> int:
        return self.memory_bytes - self.used_memory

    @property
    def free_gpus(self) -> int:
        return self.gpus - self.used_gpus


@dataclass(frozen=True, kw_only=True)
class Demand:
    """What one allocation of a variant needs on a node, and how many nodes."""

    cpus: float
    memory_bytes: int
    gpus: int = 0
    pool: str = ""
    instances: int = 0  # 0 = every eligible node


@dataclass(frozen=True, kw_only=True)
class Placement:
    """The result of `place`.

    targets: the node ids that hold the variant (kept ones first).
    not_chosen: node_id -> why not, for every node of `nodes` not in targets.
    shortfall: why no node could ever hold the demand, else None.
    summary: not_chosen counted by reason; a kept placement holds only this
        (`compact`), since a reason per node of every variant is
        deployments × nodes entries.
    """

    targets: tuple[str, ...]
    not_chosen: Mapping[str, str]
    shortfall: str | None = None
    summary: tuple[reasons.ReasonGroup, ...] = ()

    def compact(self) -> Placement:
        """The placement without its per-node reasons, counted by reason instead."""
        if not self.not_chosen:
            return self
        return Placement(
            targets=self.targets, not_chosen={}, shortfall=self.shortfall, summary=tuple(reasons.summarise(self.not_chosen))
        )

    def reason_groups(self) -> tuple[reasons.ReasonGroup, ...]:
        return self.summary or tuple(reasons.summarise(self.not_chosen))


def estimate_memory(model_bytes: int) -> int:
    """The memory estimate of one allocation: 2 × model_bytes + 64 MiB."""
    return MODEL_MEMORY_FACTOR * max(0, model_bytes) + MEMORY_OVERHEAD_BYTES


def demand_for(variant: deployments_pb2.VariantSpec, *, model_bytes: int) -> Demand:
    """The Demand of one variant whose model file has model_bytes bytes.

    Threads of 0 count as 1 (the defaults), so a variant always needs a CPU
    unless resources.cpus says otherwise.
    """
    res = variant.resources
    threads = max(1, variant.inference_threads) * max(1, variant.model_threads)
    return Demand(
        cpus=res.cpus if res.cpus > 0 else float(threads),
        memory_bytes=res.memory_bytes if res.memory_bytes > 0 else estimate_memory(model_bytes),
        gpus=max(0, res.gpus),
        pool=res.pool,
        instances=max(0, variant.instances),
    )


def demand_of_allocation(spec: agent_pb2.AllocationSpec) -> Demand:
    """What an existing allocation holds on its node, from its own spec (which
    may differ from its variant's current settings during a rolling update)."""
    res = spec.resources
    threads = max(1, spec.inference_threads) * max(1, spec.model_threads)
    return Demand(
        cpus=res.cpus if res.cpus > 0 else float(threads),
        memory_bytes=res.memory_bytes if res.memory_bytes > 0 else estimate_memory(spec.model_bytes),
        gpus=max(0, res.gpus),
        pool=res.pool,
        instances=1,
    )


def place(demand: Demand, nodes: Sequence[NodeView], *, current: Collection[str]) -> Placement:
    """Choose the target nodes of one variant (rules in the module docstring).

    Args:
        demand: what one allocation needs and how many nodes (0 = all eligible).
        nodes: every node of the fleet, whatever its state.
        current: node ids that hold this variant now.

    Returns:
        The Placement; a reason for every node of `nodes` not chosen.
    """
    if demand.instances < 0:
        raise ValueError(f"instances must be >= 0, got {demand.instances}")
    current_ids = set(current)
    not_chosen: dict[str, str] = {}
    kept: list[NodeView] = []
    eligible: list[NodeView] = []
    for n in nodes:
        if n.node_id in current_ids:
            if n.ready:
                kept.append(n)
            else:
                not_chosen[n.node_id] = "node is not ready"
            continue
        reason = why_not_eligible(demand, n)
        if reason is None:
            eligible.append(n)
        else:
            not_chosen[n.node_id] = reason

    kept.sort(key=lambda n: (not n.schedulable, n.node_id))
    eligible.sort(key=lambda n: (-n.free_cpus, n.node_id))
    if demand.instances == 0:
        chosen = kept + eligible
    else:
        chosen = (kept + eligible)[: demand.instances]
        limit = f"instances limit {demand.instances} reached"
        for n in (kept + eligible)[demand.instances :]:
            not_chosen[n.node_id] = limit
    return Placement(
        targets=tuple(n.node_id for n in chosen),
        not_chosen=not_chosen,
        shortfall=_shortfall(demand, nodes),
    )


def _pool_mismatch(demand: Demand, n: NodeView) -> str | None:
    if not demand.pool:
        return None
    node_pool = n.labels.get("pool")
    if node_pool == demand.pool:
        return None
    if node_pool is None:
        return f"pool {demand.pool!r} does not match the node, which has no pool label"
    return f"pool {demand.pool!r} does not match the node's pool {node_pool!r}"


def why_not_eligible(demand: Demand, n: NodeView) -> str | None:
    """None if n can take a new allocation of demand, else the reason."""
    if not n.ready:
        return "node is not ready"
    if not n.schedulable:
        return "node is cordoned"
    mismatch = _pool_mismatch(demand, n)
    if mismatch:
        return mismatch
    short: list[str] = []
    if demand.cpus > n.free_cpus + _EPSILON:
        short.append(f"needs {_cpus(demand.cpus)}, {_num(max(0.0, n.free_cpus))} of {_num(n.cpus)} free")
    if demand.memory_bytes > n.free_memory:
        short.append(
            f"needs {_bytes(demand.memory_bytes)} memory, "
            f"{_bytes(max(0, n.free_memory))} of {_bytes(n.memory_bytes)} free"
        )
    if demand.gpus > n.free_gpus:
        short.append(f"needs {_gpus(demand.gpus)}, {max(0, n.free_gpus)} of {n.gpus} free")
    return "; ".join(short) or None


def _fits_total(demand: Demand, n: NodeView) -> bool:
    return demand.cpus <= n.cpus + _EPSILON and demand.memory_bytes <= n.memory_bytes and demand.gpus <= n.gpus


def could_ever_hold(demand: Demand, n: NodeView) -> bool:
    """True if n could hold one allocation of demand by total capacity and pool, whatever its state or load."""
    return _pool_mismatch(demand, n) is None and _fits_total(demand, n)


def _shortfall(demand: Demand, nodes: Sequence[NodeView]) -> str | None:
    """Why no node could ever hold demand (by total capacity and pool), else None."""
    if not nodes:
        return "no nodes have joined the fleet"
    in_pool = [n for n in nodes if _pool_mismatch(demand, n) is None]
    if not in_pool:
        return f"no node in pool {demand.pool!r}"

    if any(_fits_total(demand, n) for n in in_pool):
        return None
    where = f" in pool {demand.pool!r}" if demand.pool else ""
    largest_cpus = max(n.cpus for n in in_pool)
    largest_memory = max(n.memory_bytes for n in in_pool)
    largest_gpus = max(n.gpus for n in in_pool)
    parts: list[str] = []
    if demand.cpus > largest_cpus + _EPSILON:
        parts.append(f"no node{where} can fit {_cpus(demand.cpus)} (largest has {_num(largest_cpus)})")
    if demand.memory_bytes > largest_memory:
        parts.append(
            f"no node{where} can fit {_bytes(demand.memory_bytes)} memory (largest has {_bytes(largest_memory)})"
        )
    if demand.gpus > largest_gpus:
        parts.append(f"no node{where} can fit {_gpus(demand.gpus)} (largest has {largest_gpus})")
    if parts:
        return "; ".join(parts)
    # Each resource fits somewhere, but never all of them on one node.
    wanted = [_cpus(demand.cpus), f"{_bytes(demand.memory_bytes)} memory"]
    if demand.gpus:
        wanted.append(_gpus(demand.gpus))
    return f"no node{where} can fit {', '.join(wanted[:-1])} and {wanted[-1]} together"


# ---- formatting ---------------------------------------------------------------
def describe_demand(demand: Demand) -> str:
    """'needs 2 cpus, 64.0 MiB memory' for one allocation."""
    parts = [_cpus(demand.cpus)]
    if demand.memory_bytes:
        parts.append(f"{_bytes(demand.memory_bytes)} memory")
    if demand.gpus:
        parts.append(_gpus(demand.gpus))
    where = f" in pool {demand.pool!r}" if demand.pool else ""
    return "needs " + ", ".join(parts) + where


def _num(value: float) -> str:
    return f"{value:g}"


def _cpus(value: float) -> str:
    return f"{_num(value)} cpu" if value == 1 else f"{_num(value)} cpus"


def _gpus(value: int) -> str:
    return f"{value} gpu" if value == 1 else f"{value} gpus"


def _bytes(value: int) -> str:
    """1536 MiB -> '1.5 GiB'; exact small values in bytes."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    amount = float(value)
    for unit in units:
        if abs(amount) < 1024 or unit == units[-1]:
            if unit == "B":
                return f"{int(amount)} B"
            return f"{amount:.1f}".rstrip("0").rstrip(".") + f" {unit}"
        amount /= 1024
    raise AssertionError("unreachable")
