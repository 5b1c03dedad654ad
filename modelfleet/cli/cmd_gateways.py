"""`modelfleet gateways list`: the inference gateways the control plane knows
of (modelfleet.v1.Gateways/ListGateways, paged): its own (embedded) and every
`modelfleet-gateway` process that reports its stats or watches the routes,
with address, the routes revision it holds, how far behind it is, whether
its watch is down (stale) and whether it still reports (live).
"""

from __future__ import annotations

import argparse

from modelfleet.cli import pages, render
from modelfleet.cli.client import Client
from modelfleet.v1 import gateways_pb2, gateways_pb2_grpc


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    gateways = sub.add_parser("gateways", help="list the inference gateways", parents=parents)
    gsub = gateways.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = gsub.add_parser("list", help="list gateways with address, revision, staleness and liveness", parents=parents)
    pages.add_limit(ls)
    ls.set_defaults(func=list_gateways)


def gateway_row(g: gateways_pb2.GatewayInfo) -> tuple[object, ...]:
    behind = "-" if g.behind < 0 else str(g.behind)
    age = "-" if g.embedded or not g.HasField("last_report") else f"{g.seconds_since_report:.1f}s"
    return (
        g.gateway_id, g.address or "-", "embedded" if g.embedded else "standalone", g.revision, behind,
        "stale" if g.stale else "fresh", "live" if g.live else "gone", age,
    )  # fmt: skip


def list_gateways(args: argparse.Namespace, client: Client) -> int:
    stub = gateways_pb2_grpc.GatewaysStub(client.channel)
    resp = pages.collect(stub.ListGateways, gateways_pb2.ListGatewaysRequest(), "gateways", limit=args.limit)
    if args.json:
        render.print_proto(resp)
        return 0
    render.table(("gateway_id", "address", "kind", "revision", "behind", "routes", "state", "last_report"),
                 [gateway_row(g) for g in resp.gateways])  # fmt: skip
    return 0
