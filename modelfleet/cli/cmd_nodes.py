"""`modelfleet nodes list|get|drain|uncordon`: the fleet as the control plane sees it.

Draining cordons a node (nothing new is placed on it) and moves its
allocations to other nodes make-before-break: each replacement reaches
STARTED before the drained allocation stops (with nowhere to go, it keeps
serving). `--wait` returns once the node holds no allocation. Uncordon makes
it schedulable again; what moved away stays where it went.
"""

from __future__ import annotations

import argparse
import sys
import time

from modelfleet.cli import pages, render
from modelfleet.cli.client import DEFAULT_RPC_TIMEOUT, Client
from modelfleet.cli.parsing import parse_duration
from modelfleet.v1 import nodes_pb2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    nodes = sub.add_parser("nodes", help="list, inspect, drain and uncordon nodes", parents=parents)
    nsub = nodes.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = nsub.add_parser("list", help="list nodes", parents=parents)
    ls.add_argument("--selector", "-l", default="", metavar="KEY=VALUE[,...]", help="only nodes with these labels")
    ls.add_argument("--state", choices=("ready", "suspect", "lost"), help="only nodes in this state")
    pages.add_limit(ls)
    ls.set_defaults(func=list_nodes)
    for name, func, text in (
        ("get", get_node, "show one node"),
        ("drain", drain_node, "cordon a node and move its allocations elsewhere (make-before-break)"),
        ("uncordon", uncordon_node, "make a drained node schedulable again"),
    ):
        p = nsub.add_parser(name, help=text, parents=parents)
        p.add_argument("node_id", metavar="NODE_ID")
        if name == "drain":
            p.add_argument("--wait", action="store_true", help="return once the node holds no allocation")
            p.add_argument("--timeout", type=parse_duration, default=300.0, metavar="DURATION",
                           help="with --wait: give up after this long (default 5m)")  # fmt: skip
        p.set_defaults(func=func)


def node_state(node: nodes_pb2.Node) -> str:
    state = render.enum_name(nodes_pb2.NodeState, node.state)
    return state if node.schedulable else f"{state},cordoned"


def _labels(node: nodes_pb2.Node) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(node.labels.items())) or "-"


def node_row(node: nodes_pb2.Node) -> tuple[object, ...]:
    return (
        node.node_id,
        node_state(node),
        f"{render.cpus(node.allocated.cpus)}/{render.cpus(node.capacity.cpus)}",
        f"{render.size(node.allocated.memory_bytes)}/{render.size(node.capacity.memory_bytes)}",
        _labels(node),
        len(node.allocation_ids),
    )


def print_node(node: nodes_pb2.Node) -> None:
    rows = [
        ("node_id", node.node_id),
        ("hostname", node.hostname or "-"),
        ("state", node_state(node)),
        ("cpus", f"{render.cpus(node.allocated.cpus)} used / {render.cpus(node.capacity.cpus)}"),
        ("memory", f"{render.size(node.allocated.memory_bytes)} used / {render.size(node.capacity.memory_bytes)}"),
        ("gpus", f"{node.allocated.gpus} used / {node.capacity.gpus}"),
        ("labels", _labels(node)),
        ("schedulable", str(node.schedulable).lower()),
        ("agent_version", node.agent_version or "-"),
        ("registered_at", render.timestamp(node.registered_at)),
        ("last_heartbeat", render.timestamp(node.last_heartbeat)),
        ("generation", f"{node.applied_generation} applied / {node.generation} sent"),
        ("allocations", ", ".join(node.allocation_ids) or "-"),
    ]
    for key, value in rows:
        print(f"{key + ':':<16}{value}")


def list_nodes(args: argparse.Namespace, client: Client) -> int:
    request = nodes_pb2.ListNodesRequest(label_selector=args.selector)
    if args.state:
        request.state = nodes_pb2.NodeState.Value(f"NODE_STATE_{args.state.upper()}")
    resp = pages.collect(client.nodes.ListNodes, request, "nodes", limit=args.limit)
    if args.json:
        render.print_proto(resp)
        return 0
    render.table(("node_id", "state", "cpus", "memory", "labels", "allocations"),
                 [node_row(n) for n in sorted(resp.nodes, key=lambda n: n.node_id)])
    return 0


def _show(args: argparse.Namespace, node: nodes_pb2.Node) -> int:
    if args.json:
        render.print_proto(node)
    else:
        print_node(node)
    return 0


def get_node(args: argparse.Namespace, client: Client) -> int:
    return _show(args, client.nodes.GetNode(nodes_pb2.GetNodeRequest(node_id=args.node_id),
                                            timeout=DEFAULT_RPC_TIMEOUT))


def drain_node(args: argparse.Namespace, client: Client) -> int:
    node = client.nodes.DrainNode(nodes_pb2.DrainNodeRequest(node_id=args.node_id), timeout=DEFAULT_RPC_TIMEOUT)
    if getattr(args, "wait", False):
        deadline = time.monotonic() + args.timeout
        while node.allocation_ids:
            if time.monotonic() > deadline:
                print(f"error: node {args.node_id} still holds {len(node.allocation_ids)} allocation(s) after "
                      f"{args.timeout:g}s: {', '.join(node.allocation_ids)}", file=sys.stderr)  # fmt: skip
                return 1
            time.sleep(0.5)  # polling the node's state for the user
            node = client.nodes.GetNode(nodes_pb2.GetNodeRequest(node_id=args.node_id), timeout=DEFAULT_RPC_TIMEOUT)
    return _show(args, node)


def uncordon_node(args: argparse.Namespace, client: Client) -> int:
    return _show(args, client.nodes.UncordonNode(nodes_pb2.UncordonNodeRequest(node_id=args.node_id),
                                                 timeout=DEFAULT_RPC_TIMEOUT))
