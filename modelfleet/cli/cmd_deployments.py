"""`modelfleet deployments start|stop|update|delete|list|get|stats|watch`.

`start` prints the allocation in the Elasticsearch seed's shape (JSON on
stdout); `--json` prints the whole StartDeploymentResponse instead. Calls
that wait on the server (start with wait_for, stop --wait) get a client
deadline of the server-side timeout plus a margin, so the server's
DEADLINE_EXCEEDED (with its message) arrives before ours.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Iterator

import grpc
from google.protobuf import duration_pb2

from modelfleet.cli import render
from modelfleet.cli.client import DEFAULT_RPC_TIMEOUT, Client
from modelfleet.cli.errors import CliError
from modelfleet.cli.parsing import arg_type, parse_bytes, parse_duration, parse_key_value, positive_int
from modelfleet.v1 import common_pb2, deployments_pb2

SERVER_DEFAULT_TIMEOUT = 20.0
DEADLINE_MARGIN = 30.0

WAIT_FOR = {
    "starting": deployments_pb2.WAIT_FOR_STARTING,
    "started": deployments_pb2.WAIT_FOR_STARTED,
    "fully_allocated": deployments_pb2.WAIT_FOR_FULLY_ALLOCATED,
}
_DURATION = arg_type(parse_duration, "duration")
_COUNT = arg_type(positive_int, "count")


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def _spec_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by start and update (default None = not given)."""
    p.add_argument("--model-version", type=_COUNT, help="0 = newest NORMAL version")
    p.add_argument("--inference-threads", type=_COUNT, help="threads per inference (default 1)")
    p.add_argument("--model-threads", type=_COUNT, help="inferences run at once per node (default 1)")
    p.add_argument("--queue-capacity", type=_COUNT, help="waiting requests per node before rejecting (default 1024)")
    p.add_argument("--instances", type=_COUNT, help="number of nodes; 0 = every eligible node (default)")
    p.add_argument("--description")
    p.add_argument("--cpus", type=float, help="CPUs per node (default inference_threads x model_threads)")
    p.add_argument("--memory", type=arg_type(parse_bytes, "size"), help="memory per node, e.g. 2Gi")
    p.add_argument("--gpus", type=_COUNT)
    p.add_argument("--pool", help="only nodes labelled pool=POOL")
    p.add_argument("--env", action="append", type=arg_type(parse_key_value, "KEY=VALUE"), metavar="KEY=VALUE",
                   help="environment variable of the worker (repeatable)")
    p.add_argument("--auto-stop", type=_DURATION, metavar="DURATION", help="stop after 1h..24h")
    p.add_argument("--traffic-limit-qps", type=float, help="calls per second; 0 = none")
    p.add_argument("--request-id", help="idempotency key for retries")
    p.add_argument("--dry-run", action="store_true", default=None, help="validate and place, change nothing")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    dep = sub.add_parser("deployments", help="start, stop and inspect deployments", parents=parents)
    dsub = dep.add_subparsers(dest="action", metavar="ACTION", required=True)

    start = dsub.add_parser("start", help="start a deployment of a model", parents=parents)
    start.add_argument("model_id", metavar="MODEL")
    start.add_argument("--deployment-id", default="", help="default: the model id")
    _spec_flags(start)
    start.add_argument("--max-batch-size", type=_COUNT, help="dynamic batching: rows per model run (default 0 = off)")
    start.add_argument("--max-queue-delay", type=_DURATION, metavar="DURATION",
                       help="dynamic batching: how long a call waits for its batch to fill, e.g. 500us")
    start.add_argument("--wait-for", choices=tuple(WAIT_FOR), default="started")
    start.add_argument("--timeout", type=_DURATION, metavar="DURATION", help="wait_for timeout (server default 20s)")
    start.set_defaults(func=start_deployment)

    update = dsub.add_parser("update", help="change a running deployment", parents=parents)
    update.add_argument("deployment_id", metavar="ID")
    _spec_flags(update)
    update.set_defaults(func=update_deployment)

    stop = dsub.add_parser("stop", help="stop a deployment (restartable)", parents=parents)
    stop.add_argument("deployment_id", metavar="ID")
    stop.add_argument("--wait", action="store_true", help="return once it is stopped")
    stop.add_argument("--timeout", type=_DURATION, metavar="DURATION", help="with --wait (server default 20s)")
    stop.set_defaults(func=stop_deployment)

    delete = dsub.add_parser("delete", help="delete a deployment", parents=parents)
    delete.add_argument("deployment_id", metavar="ID")
    delete.set_defaults(func=delete_deployment)

    dsub.add_parser("list", help="list deployments", parents=parents).set_defaults(func=list_deployments)

    get = dsub.add_parser("get", help="show a deployment and its allocations", parents=parents)
    get.add_argument("deployment_id", metavar="ID")
    get.set_defaults(func=get_deployment)

    stats = dsub.add_parser("stats", help="per-node inference statistics", parents=parents)
    stats.add_argument("deployment_id", metavar="ID")
    stats.set_defaults(func=deployment_stats)

    watch = dsub.add_parser("watch", help="print a line per change until Ctrl-C", parents=parents)
    watch.add_argument("deployment_id", metavar="ID")
    watch.add_argument("--until", choices=("started", "fully_allocated", "stopped"),
                       help="exit 0 once the deployment reaches this")
    watch.add_argument("--timeout", type=_DURATION, metavar="DURATION", help="give up after this long")
    watch.set_defaults(func=watch_deployment)


_MASKABLE = ("model_version", "inference_threads", "model_threads", "queue_capacity", "instances", "description",
             "traffic_limit_qps")


def build_spec(args: argparse.Namespace) -> tuple[deployments_pb2.StartDeploymentRequest, list[str]]:
    """The request fields from the flags, and the field names that were given."""
    req = deployments_pb2.StartDeploymentRequest()
    given: list[str] = []
    for name in _MASKABLE:
        value = getattr(args, name, None)
        if value is not None:
            setattr(req, name, value)
            given.append(name)
    res_given = False
    for flag, field in (("cpus", "cpus"), ("memory", "memory_bytes"), ("gpus", "gpus"), ("pool", "pool")):
        value = getattr(args, flag, None)
        if value is not None:
            setattr(req.resources, field, value)
            res_given = True
    if res_given:
        given.append("resources")
    if args.env:
        req.env.update(dict(args.env))
        given.append("env")
    if args.auto_stop is not None:
        req.auto_stop.CopyFrom(duration(args.auto_stop))
        given.append("auto_stop")
    return req, given


_VARIANT_FIELDS = ("model_id", "model_version", "inference_threads", "model_threads", "queue_capacity", "instances")


def as_variant(req: deployments_pb2.StartDeploymentRequest) -> None:
    """Move the single-model fields into one variant of weight 100 (the form the
    API takes for per-variant settings such as dynamic batching)."""
    variant = req.variants.add(weight=100)
    for name in _VARIANT_FIELDS:
        setattr(variant, name, getattr(req, name))
        req.ClearField(name)
    if req.HasField("resources"):
        variant.resources.CopyFrom(req.resources)
        req.ClearField("resources")
    variant.env.update(dict(req.env))
    req.ClearField("env")


def start_deployment(args: argparse.Namespace, client: Client) -> int:
    req, _ = build_spec(args)
    req.model_id = args.model_id
    if args.max_batch_size or args.max_queue_delay:
        as_variant(req)
        req.variants[0].max_batch_size = args.max_batch_size or 0
        req.variants[0].max_queue_delay_us = int(round((args.max_queue_delay or 0.0) * 1e6))
    req.deployment_id = args.deployment_id
    req.wait_for = WAIT_FOR[args.wait_for]
    req.request_id = args.request_id or ""
    req.dry_run = bool(args.dry_run)
    if args.timeout is not None:
        req.timeout.CopyFrom(duration(args.timeout))
    wait = SERVER_DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    resp = client.deployments.StartDeployment(req, timeout=wait + DEADLINE_MARGIN)
    if args.json:
        render.print_proto(resp)
    else:
        print(render.dumps(render.start_response_seed(resp)))
    return 0


def update_deployment(args: argparse.Namespace, client: Client) -> int:
    spec, given = build_spec(args)
    if not given and args.dry_run is None:
        raise CliError("nothing to update: pass at least one field flag (see --help)", code=2)
    req = deployments_pb2.UpdateDeploymentRequest(deployment_id=args.deployment_id, spec=spec,
                                                  request_id=args.request_id or "", dry_run=bool(args.dry_run))
    req.update_mask.paths.extend(given)
    resp = client.deployments.UpdateDeployment(req, timeout=DEFAULT_RPC_TIMEOUT)
    if args.json:
        render.print_proto(resp)
    else:
        print_deployment(resp.deployment)
    return 0


def stop_deployment(args: argparse.Namespace, client: Client) -> int:
    req = deployments_pb2.StopDeploymentRequest(deployment_id=args.deployment_id, wait=args.wait)
    if args.timeout is not None:
        req.timeout.CopyFrom(duration(args.timeout))
    wait = SERVER_DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    resp = client.deployments.StopDeployment(req, timeout=(wait if args.wait else 0) + DEADLINE_MARGIN)
    if args.json:
        render.print_proto(resp)
    else:
        print(f"{resp.deployment.deployment_id or args.deployment_id}: {render.deployment_status(resp.deployment.status)}")
    return 0


def delete_deployment(args: argparse.Namespace, client: Client) -> int:
    resp = client.deployments.DeleteDeployment(
        deployments_pb2.DeleteDeploymentRequest(deployment_id=args.deployment_id), timeout=DEFAULT_RPC_TIMEOUT)
    if args.json:
        render.print_proto(resp)
    else:
        print(f"deleted {resp.deployment.deployment_id or args.deployment_id}")
    return 0


def _models(dep: deployments_pb2.Deployment) -> str:
    parts = []
    for i, variant in enumerate(dep.variants):
        version = variant.model_version
        if i < len(dep.allocations) and dep.allocations[i].task_parameters.model_version:
            version = dep.allocations[i].task_parameters.model_version
        text = f"{variant.model_id}:v{version}" if version else variant.model_id
        if len(dep.variants) > 1:
            text += f"@{variant.weight}%"
        parts.append(text)
    return ",".join(parts) or "-"


def _targets(dep: deployments_pb2.Deployment) -> str:
    started = sum(render.started_count(a) for a in dep.allocations)
    targets = sum(a.target_nodes or len(a.routing_table) for a in dep.allocations)
    return f"{started}/{targets}"


def list_deployments(args: argparse.Namespace, client: Client) -> int:
    resp = client.deployments.ListDeployments(deployments_pb2.ListDeploymentsRequest(), timeout=DEFAULT_RPC_TIMEOUT)
    if args.json:
        render.print_proto(resp)
        return 0
    rows = [
        (d.deployment_id, render.deployment_status(d.status), _models(d),
         ",".join(render.allocation_state(a.allocation_state) for a in d.allocations) or "-", _targets(d))
        for d in sorted(resp.deployments, key=lambda d: d.deployment_id)
    ]
    render.table(("deployment_id", "status", "model", "allocation_state", "started/targets"), rows)
    return 0


def print_deployment(dep: deployments_pb2.Deployment) -> None:
    status = render.deployment_status(dep.status)
    rows = [
        ("deployment_id", dep.deployment_id),
        ("status", f"{status} ({dep.status_reason})" if dep.status_reason else status),
        ("model", _models(dep)),
        ("description", dep.description or "-"),
        ("owner", dep.owner or "-"),
        ("created_at", render.timestamp(dep.created_at)),
        ("start_time", render.timestamp(dep.start_time)),
        ("auto_stop_at", render.timestamp(dep.auto_stop_at)),
        ("traffic_limit", f"{dep.traffic_limit_qps:g} qps" if dep.traffic_limit_qps else "none"),
        ("revision", dep.revision),
    ]
    for key, value in rows:
        print(f"{key + ':':<15}{value}")
    if dep.variants:
        print()
        render.table(
            ("variant", "model", "version", "weight", "threads", "queue", "instances"),
            [(v.name or "-", v.model_id, v.model_version or "newest", f"{v.weight}%" if v.weight else "-",
              f"{v.inference_threads or 1}x{v.model_threads or 1}", v.queue_capacity or "default",
              v.instances or "all") for v in dep.variants],
        )
    for alloc in dep.allocations:
        print()
        label = alloc.variant or dep.deployment_id
        target = alloc.target_nodes or len(alloc.routing_table)
        print(f"allocation {label} (weight {alloc.weight or 100}%, {render.started_count(alloc)}/{target} started):")
        data = {"allocation": render.allocation_seed(alloc)}
        if alloc.not_chosen:
            data["not_chosen"] = dict(sorted(alloc.not_chosen.items()))
        print(render.dumps(data))


def get_deployment(args: argparse.Namespace, client: Client) -> int:
    dep = client.deployments.GetDeployment(
        deployments_pb2.GetDeploymentRequest(deployment_id=args.deployment_id), timeout=DEFAULT_RPC_TIMEOUT)
    if args.json:
        render.print_proto(dep)
    else:
        print_deployment(dep)
    return 0


STATS_HEADERS = ("node", "routing_state", "inference_count", "average_inference_time_ms", "error_count",
                 "rejected_execution_count", "timeout_count", "pending", "throughput_last_minute",
                 "peak_throughput_per_minute", "last_access")


def _stats_row(node: str, state: str, s: common_pb2.InferenceStats) -> tuple[object, ...]:
    return (node, state, s.inference_count, f"{s.average_inference_time_ms:.3f}", s.error_count,
            s.rejected_execution_count, s.timeout_count, s.number_of_pending_requests, s.throughput_last_minute,
            s.peak_throughput_per_minute, render.timestamp(s.last_access))


def deployment_stats(args: argparse.Namespace, client: Client) -> int:
    resp = client.deployments.GetDeploymentStats(
        deployments_pb2.GetDeploymentStatsRequest(deployment_id=args.deployment_id), timeout=DEFAULT_RPC_TIMEOUT)
    if args.json:
        render.print_proto(resp)
        return 0
    print(f"deployment {resp.deployment_id or args.deployment_id}: {render.deployment_status(resp.status)}")
    several = len({n.variant for n in resp.nodes}) > 1
    rows = []
    for n in sorted(resp.nodes, key=lambda n: (n.variant, n.node_id)):
        state = render.routing_state(n.routing_state)
        if n.reason and n.routing_state == common_pb2.ROUTING_STATE_FAILED:
            state += f" ({n.reason})"
        node = f"{n.node_id} [{n.variant}]" if several else n.node_id
        rows.append(_stats_row(node, state, n.stats))
    if len(resp.nodes) > 1:
        rows.append(_stats_row("(total)", "", resp.total))
    render.table(STATS_HEADERS, rows)
    return 0


def reached(dep: deployments_pb2.Deployment, until: str) -> bool:
    """Whether a snapshot satisfies `--until` (every allocation, for the allocation states)."""
    if until == "stopped":
        return dep.status == common_pb2.DEPLOYMENT_STATUS_STOPPED
    if not dep.allocations:
        return False
    wanted = {common_pb2.ALLOCATION_STATE_FULLY_ALLOCATED}
    if until == "started":
        wanted.add(common_pb2.ALLOCATION_STATE_STARTED)
    return all(a.allocation_state in wanted for a in dep.allocations)


def snapshot_line(dep: deployments_pb2.Deployment, now: dt.datetime | None = None) -> str:
    """One watch line: time, id, status, then per allocation its state and routing."""
    when = (now or dt.datetime.now().astimezone()).isoformat(timespec="seconds")
    parts = [when, dep.deployment_id, f"status={render.deployment_status(dep.status)}"]
    if dep.status_reason:
        parts.append(f"reason={dep.status_reason!r}")
    for alloc in dep.allocations:
        label = f"{alloc.variant}:" if len(dep.allocations) > 1 and alloc.variant else ""
        target = alloc.target_nodes or len(alloc.routing_table)
        parts.append(f"{label}{render.allocation_state(alloc.allocation_state)} "
                     f"{render.started_count(alloc)}/{target} [{render.routing_summary(alloc)}]")
    return " ".join(parts)


def _until_deadline(stream: Iterator[deployments_pb2.WatchDeploymentResponse],
                    args: argparse.Namespace) -> Iterator[deployments_pb2.WatchDeploymentResponse]:
    """The stream's snapshots; our own --timeout ends it with a clear message."""
    try:
        yield from stream
    except grpc.RpcError as err:
        if args.timeout is None or err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        if args.until:
            raise CliError(f"deployment {args.deployment_id} did not reach {args.until} "
                           f"within --timeout {args.timeout:g}s") from None


def watch_deployment(args: argparse.Namespace, client: Client) -> int:
    stream = client.deployments.WatchDeployment(
        deployments_pb2.WatchDeploymentRequest(deployment_id=args.deployment_id), timeout=args.timeout)
    try:
        for snap in _until_deadline(stream, args):
            dep = snap.deployment
            print(render.proto_json(snap, indent=None) if args.json else snapshot_line(dep), flush=True)
            if args.until and reached(dep, args.until):
                return 0
            if args.until in ("started", "fully_allocated") and dep.status == common_pb2.DEPLOYMENT_STATUS_STOPPED:
                raise CliError(f"deployment {args.deployment_id} stopped before it reached {args.until}")
    finally:
        stream.cancel()
    if args.until:
        raise CliError(f"the watch ended before deployment {args.deployment_id} reached {args.until}")
    print(f"watch of {args.deployment_id} ended", file=sys.stderr)
    return 0
