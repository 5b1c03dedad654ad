"""Human output: enum names, timestamps, sizes, tables, the allocation shape.

Enum values print lowercase without their type prefix (`ROUTING_STATE_STARTED`
→ `started`), as Elasticsearch prints them. `allocation_seed` builds the
Elasticsearch start-deployment answer (`task_parameters`, `routing_table`,
`allocation_state`, `start_time`) as plain dicts, so it prints as JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from modelfleet.v1 import common_pb2, deployments_pb2

_PREFIXES = {
    "RoutingState": "ROUTING_STATE_",
    "AllocationState": "ALLOCATION_STATE_",
    "DeploymentStatus": "DEPLOYMENT_STATUS_",
    "ModelState": "MODEL_STATE_",
    "ModelFormat": "MODEL_FORMAT_",
    "NodeState": "NODE_STATE_",
    "WaitFor": "WAIT_FOR_",
    "ReplicaRole": "REPLICA_ROLE_",
}


def enum_name(enum_type: Any, value: int) -> str:
    """`started` for (RoutingState, ROUTING_STATE_STARTED); `unspecified` for 0.

    Unknown numbers (a newer server) print as their number.
    """
    try:
        name: str = enum_type.Name(value)
    except ValueError:
        return str(value)
    descriptor = getattr(enum_type, "DESCRIPTOR", None)
    prefix = _PREFIXES.get(getattr(descriptor, "name", ""), "")
    return name.removeprefix(prefix).lower()


def routing_state(value: int) -> str:
    return enum_name(common_pb2.RoutingState, value)


def allocation_state(value: int) -> str:
    return enum_name(common_pb2.AllocationState, value)


def deployment_status(value: int) -> str:
    return enum_name(common_pb2.DeploymentStatus, value)


def timestamp(ts: Timestamp, empty: str = "-") -> str:
    """RFC 3339 UTC ("2024-05-01T12:00:00.123Z"), or `empty` when unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return empty
    return str(ts.ToJsonString())


def size(n: int) -> str:
    """1536 → "1.5 KiB"."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def cpus(value: float) -> str:
    return f"{value:g}"


def allocation_seed(alloc: deployments_pb2.Allocation) -> dict[str, Any]:
    """One allocation in the Elasticsearch seed's shape (plain dicts)."""
    tp = alloc.task_parameters
    out: dict[str, Any] = {
        "task_parameters": {
            "model_id": tp.model_id,
            "model_version": tp.model_version,
            "model_bytes": tp.model_bytes,
            "inference_threads": tp.inference_threads,
            "model_threads": tp.model_threads,
            "queue_capacity": tp.queue_capacity,
        },
        "routing_table": {
            node: {"routing_state": routing_state(entry.routing_state), "reason": entry.reason}
            for node, entry in sorted(alloc.routing_table.items())
        },
        "allocation_state": allocation_state(alloc.allocation_state),
    }
    start = timestamp(alloc.start_time, empty="")
    if start:
        out["start_time"] = start
    return out


def start_response_seed(resp: deployments_pb2.StartDeploymentResponse) -> dict[str, Any]:
    """`{"allocation": {...}}` for a StartDeploymentResponse, plus why nodes were skipped."""
    alloc = resp.allocation
    if not resp.HasField("allocation") and resp.deployment.allocations:
        alloc = resp.deployment.allocations[0]
    out: dict[str, Any] = {"allocation": allocation_seed(alloc)}
    if alloc.not_chosen or alloc.not_chosen_summary:
        out["not_chosen"] = not_chosen(alloc)
    return out


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def proto_json(message: Message, *, indent: int | None = 2) -> str:
    """The proto as JSON, field names as in the .proto file."""
    return str(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=indent))


def print_proto(message: Message, out: TextIO | None = None) -> None:
    print(proto_json(message), file=out or sys.stdout)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None) -> None:
    """Print a left-aligned table with upper-case headers, two spaces apart."""
    cells = [[str(h).upper() for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    stream = out or sys.stdout
    for row in cells:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths))
        print(line.rstrip(), file=stream)


def routing_summary(alloc: deployments_pb2.Allocation) -> str:
    """`node-a=started node-b=starting` (with the reason of failed nodes)."""
    parts = []
    for node, entry in sorted(alloc.routing_table.items()):
        state = routing_state(entry.routing_state)
        if entry.routing_state == common_pb2.ROUTING_STATE_FAILED and entry.reason:
            state += f"({entry.reason})"
        parts.append(f"{node}={state}")
    return " ".join(parts) or "-"


def started_count(alloc: deployments_pb2.Allocation) -> int:
    if alloc.route_counts:  # every view has the counts; the BASIC one has no routing table
        return alloc.route_counts.get("started", 0)
    return sum(1 for e in alloc.routing_table.values() if e.routing_state == common_pb2.ROUTING_STATE_STARTED)


def target_count(alloc: deployments_pb2.Allocation) -> int:
    return alloc.target_nodes or sum(alloc.route_counts.values()) or len(alloc.routing_table)


def not_chosen(alloc: deployments_pb2.Allocation) -> dict[str, str] | list[str]:
    """Why nodes were not chosen: per node when the server sent that, else counts by reason."""
    if alloc.not_chosen:
        return dict(sorted(alloc.not_chosen.items()))
    lines = []
    for group in alloc.not_chosen_summary:
        noun = "node" if group.count == 1 else "nodes"
        more = "e.g. " if group.count > len(group.example_nodes) else ""
        lines.append(f"{group.count} {noun}: {group.reason} ({more}{', '.join(group.example_nodes)})")
    return lines
