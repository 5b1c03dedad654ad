"""`modelfleet status`: the control-plane replicas on one store
(modelfleet.v1.ControlPlanes/ListControlPlanes, answered by any replica from
the database): each replica with its address and role, then the leader, its
epoch and when its lease expires (database clock). A control plane on SQLite
lists itself as the leader, epoch 0.
"""

from __future__ import annotations

import argparse

from google.protobuf.timestamp_pb2 import Timestamp

from modelfleet.cli import render
from modelfleet.cli.client import Client
from modelfleet.v1 import controlplanes_pb2 as cpb
from modelfleet.v1 import controlplanes_pb2_grpc


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    status = sub.add_parser("status", help="the control-plane replicas, the leader, its epoch and lease", parents=parents)
    status.set_defaults(func=show_status)


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _ago(reply: cpb.ListControlPlanesResponse, replica: cpb.ControlPlaneReplica) -> str:
    if not replica.HasField("last_seen") or not reply.HasField("database_time"):
        return "-"
    seconds = _seconds(reply.database_time) - _seconds(replica.last_seen)
    return f"{max(seconds, 0.0):.1f}s ago"


def show_status(args: argparse.Namespace, client: Client) -> int:
    reply = controlplanes_pb2_grpc.ControlPlanesStub(client.channel).ListControlPlanes(cpb.ListControlPlanesRequest())
    if args.json:
        render.print_proto(reply)
        return 0
    rows = [(r.replica_id, r.address or "-", render.enum_name(cpb.ReplicaRole, r.role), _ago(reply, r)) for r in reply.replicas]
    render.table(("replica", "address", "role", "last_seen"), rows)
    if not reply.replicated:
        print(f"one control plane (store without a lease); answered by {client.addr}")
    elif reply.leader_address:
        left = _seconds(reply.lease_expires_at) - _seconds(reply.database_time)
        print(f"leader: {reply.leader_id} at {reply.leader_address}, epoch {reply.epoch}, "
              f"lease expires in {left:.1f}s (answered by {reply.answered_by} at {client.addr})")  # fmt: skip
    else:
        print(f"no leader holds the lease now (last epoch {reply.epoch}); answered by {reply.answered_by} at {client.addr}")
    return 0
