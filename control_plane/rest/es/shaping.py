"""Deployment, model and statistics messages in Elasticsearch's JSON shapes (pure: no I/O).

States are lower case, numbers JSON numbers. The `_start` answer's
`start_time` is RFC 3339 UTC ("…Z"), as the seed shows; `_stats` writes
times as epoch milliseconds, as Elasticsearch's statistics do."""

from __future__ import annotations

from typing import Any

from google.protobuf import timestamp_pb2

from modelfleet.v1 import common_pb2, deployments_pb2, models_pb2

_ROUTING = {v: k.removeprefix("ROUTING_STATE_").lower() for k, v in common_pb2.RoutingState.items()}
_ALLOCATION = {v: k.removeprefix("ALLOCATION_STATE_").lower() for k, v in common_pb2.AllocationState.items()}
_STATUS = {v: k.removeprefix("DEPLOYMENT_STATUS_").lower() for k, v in common_pb2.DeploymentStatus.items()}
_FORMATS = {v: k.removeprefix("MODEL_FORMAT_").lower() for k, v in common_pb2.ModelFormat.items()}
_MODEL_STATES = {v: k.removeprefix("MODEL_STATE_").lower() for k, v in common_pb2.ModelState.items()}
# the per-node counters Elasticsearch's deployment_stats.nodes carry, by the same names
_COUNTERS = ("inference_count", "error_count", "rejected_execution_count", "timeout_count", "number_of_pending_requests",
             "peak_throughput_per_minute", "throughput_last_minute")


def rfc3339(ts: timestamp_pb2.Timestamp) -> str:
    """"2024-05-01T12:00:00.123Z", to the millisecond as Elasticsearch writes times ("" when unset)."""
    if not (ts.seconds or ts.nanos):
        return ""
    return str(timestamp_pb2.Timestamp(seconds=ts.seconds, nanos=ts.nanos // 1_000_000 * 1_000_000).ToJsonString())


def epoch_ms(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def routing_state(state: int) -> str:
    return _ROUTING.get(state, "unspecified")


def allocation_state(state: int) -> str:
    return _ALLOCATION.get(state, "unspecified")


def allocation(alloc: deployments_pb2.Allocation, *, variant: bool = False) -> dict[str, Any]:
    """One allocation in the seed's shape (with `variant`: its variant's name and weight after the seed's fields)."""
    tp = alloc.task_parameters
    out: dict[str, Any] = {
        "task_parameters": {
            "model_id": tp.model_id,
            "model_bytes": tp.model_bytes,
            "inference_threads": tp.inference_threads,
            "model_threads": tp.model_threads,
            "queue_capacity": tp.queue_capacity,
            "model_version": tp.model_version,
        },
        "routing_table": {node: {"routing_state": routing_state(e.routing_state), "reason": e.reason}
                          for node, e in sorted(alloc.routing_table.items())},
        "allocation_state": allocation_state(alloc.allocation_state),
        "start_time": rfc3339(alloc.start_time),
    }
    if variant:
        out["variant"] = alloc.variant
        out["weight"] = alloc.weight
    return out


def allocation_answer(deployment: deployments_pb2.Deployment) -> dict[str, Any]:
    """`{"allocation": {...}}` of the first variant; a deployment of several variants also lists each under `allocations`."""
    first = deployment.allocations[0] if deployment.allocations else deployments_pb2.Allocation()
    out: dict[str, Any] = {"allocation": allocation(first)}
    if len(deployment.allocations) > 1:
        out["allocations"] = [allocation(a, variant=True) for a in deployment.allocations]
    return out


def model_config(model: models_pb2.Model) -> dict[str, Any]:
    """One model version as an entry of `trained_model_configs`."""
    return {
        "model_id": model.model_id,
        "model_version": model.version,
        "model_type": _FORMATS.get(model.format, "unspecified"),
        "model_size_bytes": model.model_bytes,
        "sha256": model.sha256,
        "state": _MODEL_STATES.get(model.state, "unspecified"),
        "state_reason": model.state_reason,
        "description": model.description,
        "create_time": epoch_ms(model.created_at),
        "input": {"field_names": [t.name for t in model.inputs]},
        "inputs": [tensor_spec(t) for t in model.inputs],
        "outputs": [tensor_spec(t) for t in model.outputs],
    }


def tensor_spec(spec: common_pb2.TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _node_stats(node: deployments_pb2.NodeStats) -> dict[str, Any]:
    s = node.stats
    out: dict[str, Any] = {
        "node": {node.node_id: {"name": node.node_id}},
        "routing_state": {"routing_state": routing_state(node.routing_state), "reason": node.reason},
        "variant": node.variant,
        "allocation_id": node.allocation_id,
        "average_inference_time_ms": s.average_inference_time_ms,
        **{name: getattr(s, name) for name in _COUNTERS},
    }
    if s.HasField("start_time"):
        out["start_time"] = epoch_ms(s.start_time)
    if s.HasField("last_access"):
        out["last_access"] = epoch_ms(s.last_access)
    return out


def deployment_stats(deployment: deployments_pb2.Deployment, stats: deployments_pb2.GetDeploymentStatsResponse) -> dict[str, Any]:
    """Elasticsearch's `deployment_stats` of one deployment (its first variant's settings at the top)."""
    first = deployment.allocations[0] if deployment.allocations else deployments_pb2.Allocation()
    tp = first.task_parameters
    started = sum(1 for a in deployment.allocations for e in a.routing_table.values()
                  if e.routing_state == common_pb2.ROUTING_STATE_STARTED)
    target = sum(a.target_nodes for a in deployment.allocations)
    total = stats.total
    return {
        "deployment_id": deployment.deployment_id,
        "model_id": tp.model_id,
        "threads_per_allocation": tp.inference_threads,
        "number_of_allocations": target,
        "queue_capacity": tp.queue_capacity,
        "state": _STATUS.get(deployment.status, "unspecified"),
        "reason": deployment.status_reason,
        "allocation_status": {"allocation_count": started, "target_allocation_count": target,
                              "state": allocation_state(first.allocation_state)},
        "start_time": epoch_ms(deployment.start_time),
        "inference_count": total.inference_count,
        "error_count": total.error_count,
        "rejected_execution_count": total.rejected_execution_count,
        "timeout_count": total.timeout_count,
        "peak_throughput_per_minute": total.peak_throughput_per_minute,
        "nodes": [_node_stats(n) for n in stats.nodes],
    }


def model_stats(model_id: str, model_bytes: int, deployment: dict[str, Any] | None) -> dict[str, Any]:
    """One entry of `trained_model_stats`."""
    out: dict[str, Any] = {"model_id": model_id, "model_size_stats": {"model_size_bytes": model_bytes}, "pipeline_count": 0}
    if deployment is not None:
        out["deployment_stats"] = deployment
    return out
