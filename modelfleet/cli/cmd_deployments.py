"""`modelfleet deployments start|stop|update|delete|list|get|stats|events|watch`.

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

from modelfleet.cli import pages, render, specflags
from modelfleet.cli.client import DEFAULT_RPC_TIMEOUT, Client
from modelfleet.cli.errors import CliError
from modelfleet.cli.parsing import arg_type, parse_duration, positive_int
from modelfleet.cli.specflags import duration
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    dep = sub.add_parser("deployments", help="start, stop and inspect deployments", parents=parents)
    dsub = dep.add_subparsers(dest="action", metavar="ACTION", required=True)
    _register_start(dsub, parents)
    _register_update(dsub, parents)
    _register_lifecycle(dsub, parents)
    _register_inspect(dsub, parents)


def _register_start(dsub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    start = dsub.add_parser(
        "start", help="start a deployment of a model (or restart a stopped one)", parents=parents,
        description="Start MODEL, or several model versions with --variant MODEL[:VERSION]=WEIGHT (repeatable), "
                    "as one deployment. With neither, --deployment-id ID restarts that stopped deployment "
                    "with its saved settings.",
    )
    start.add_argument("model_id", metavar="MODEL", nargs="?", default="")
    start.add_argument("--deployment-id", default="", help="default: the (first) model id")
    specflags.add_flags(start, update=False)
    start.add_argument("--max-batch-size", type=_COUNT, help="dynamic batching: rows per model run (default 0 = off)")
    start.add_argument("--max-queue-delay", type=_DURATION, metavar="DURATION",
                       help="dynamic batching: how long a call waits for its batch to fill, e.g. 500us")
    start.add_argument("--wait-for", choices=tuple(WAIT_FOR), default="started")
    start.add_argument("--timeout", type=_DURATION, metavar="DURATION", help="wait_for timeout (server default 20s)")
    start.set_defaults(func=start_deployment)


def _register_update(dsub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    update = dsub.add_parser(
        "update", help="change a deployment (gated launch: make-before-break)", parents=parents,
        description="Change weights (--variant, the complete new list), add or remove variants, threads, queue, "
                    "instances, resources, env, traffic limit, auto stop or description. A variant whose worker "
                    "settings change gets new workers, started before the old ones drain and stop.",
    )
    update.add_argument("deployment_id", metavar="ID")
    specflags.add_flags(update, update=True)
    update.add_argument("--wait-for", choices=tuple(WAIT_FOR),
                        help="wait until every variant reached this and the rolling update is done")
    update.add_argument("--timeout", type=_DURATION, metavar="DURATION", help="with --wait-for (server default 20s)")
    update.set_defaults(func=update_deployment)


def _register_lifecycle(dsub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    """events, stop, delete."""
    events = dsub.add_parser("events", help="routing-state transitions, status and spec changes", parents=parents)
    events.add_argument("deployment_id", metavar="ID")
    events.add_argument("--after", type=int, default=0, metavar="SEQ", help="only events after this sequence number")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    events.set_defaults(func=deployment_events)

    stop = dsub.add_parser("stop", help="stop a deployment (restartable)", parents=parents)
    stop.add_argument("deployment_id", metavar="ID")
    stop.add_argument("--wait", action="store_true", help="return once it is stopped")
    stop.add_argument("--timeout", type=_DURATION, metavar="DURATION", help="with --wait (server default 20s)")
    stop.set_defaults(func=stop_deployment)

    delete = dsub.add_parser("delete", help="delete a deployment", parents=parents)
    delete.add_argument("deployment_id", metavar="ID")
    delete.set_defaults(func=delete_deployment)


def _register_inspect(dsub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    """list, get, stats, watch."""
    ls = dsub.add_parser("list", help="list deployments", parents=parents)
    ls.add_argument("--owner", default="", help="only this owner's deployments")
    ls.add_argument("--status", type=arg_type(_status, "status"), default=0, metavar="STATUS",
                    help="only deployments with this status (started, starting, stopped, failed, ...)")
    ls.add_argument("--model", default="", metavar="MODEL_ID", help="only deployments serving this model")
    ls.add_argument("--full", action="store_true", help="with --json: routing tables and placement reasons too")
    pages.add_limit(ls)
    ls.set_defaults(func=list_deployments)

    get = dsub.add_parser("get", help="show a deployment and its allocations", parents=parents)
    get.add_argument("deployment_id", metavar="ID")
    get.add_argument("--per-node-reasons", action="store_true",
                     help="why each node was not chosen, one line per node (default: counts by reason)")
    get.set_defaults(func=get_deployment)

    stats = dsub.add_parser("stats", help="per-node inference statistics", parents=parents)
    stats.add_argument("deployment_id", metavar="ID")
    stats.set_defaults(func=deployment_stats)

    watch = dsub.add_parser("watch", help="print a line per visible change until Ctrl-C (--json: every snapshot)", parents=parents)
    watch.add_argument("deployment_id", metavar="ID")
    watch.add_argument("--until", choices=("started", "fully_allocated", "stopped"),
                       help="exit 0 once the deployment reaches this")
    watch.add_argument("--timeout", type=_DURATION, metavar="DURATION", help="give up after this long")
    watch.set_defaults(func=watch_deployment)


build_spec = specflags.build_spec


def _spec(args: argparse.Namespace, *, update: bool = False) -> tuple[deployments_pb2.StartDeploymentRequest, list[str]]:
    try:
        return build_spec(args, update=update)
    except ValueError as exc:
        raise CliError(str(exc), code=2) from None


_VARIANT_FIELDS = ("model_id", *specflags.PER_VARIANT)


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
    if req.HasField("autoscaling"):
        variant.autoscaling.CopyFrom(req.autoscaling)
        req.ClearField("autoscaling")


def add_batching(req: deployments_pb2.StartDeploymentRequest, args: argparse.Namespace) -> None:
    """--max-batch-size / --max-queue-delay into every variant (a single model becomes one variant)."""
    if not req.variants:
        as_variant(req)
    for variant in req.variants:
        variant.max_batch_size = args.max_batch_size or 0
        variant.max_queue_delay_us = round((args.max_queue_delay or 0.0) * 1e6)


def start_deployment(args: argparse.Namespace, client: Client) -> int:
    req, given = _spec(args)
    batching = args.max_batch_size is not None or args.max_queue_delay is not None
    if args.model_id and req.variants:
        raise CliError("give either MODEL or --variant, not both", code=2)
    if not args.model_id and not req.variants:
        if not args.deployment_id:
            raise CliError("give MODEL, --variant MODEL[:VERSION]=WEIGHT, or --deployment-id ID to restart", code=2)
        if given or batching:
            raise CliError("to restart a stopped deployment give only --deployment-id; "
                           "use `modelfleet deployments update` to change it", code=2)
    req.model_id = args.model_id
    if batching:
        add_batching(req, args)
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
    elif resp.dry_run:
        print_plan(resp.deployment)
    else:
        print(render.dumps(render.start_response_seed(resp)))
    return 0


def update_deployment(args: argparse.Namespace, client: Client) -> int:
    spec, given = _spec(args, update=True)
    if not given:
        raise CliError("nothing to update: pass at least one field flag (see --help)", code=2)
    req = deployments_pb2.UpdateDeploymentRequest(deployment_id=args.deployment_id, spec=spec,
                                                  request_id=args.request_id or "", dry_run=bool(args.dry_run))
    req.update_mask.paths.extend(given)
    wait = 0.0
    if args.wait_for:
        req.wait_for = WAIT_FOR[args.wait_for]
        wait = SERVER_DEFAULT_TIMEOUT if args.timeout is None else args.timeout
        if args.timeout is not None:
            req.timeout.CopyFrom(duration(args.timeout))
    resp = client.deployments.UpdateDeployment(req, timeout=max(DEFAULT_RPC_TIMEOUT, wait + DEADLINE_MARGIN))
    if args.json:
        render.print_proto(resp)
    elif resp.dry_run:
        print_plan(resp.deployment)
    else:
        print_deployment(resp.deployment)
    return 0


def print_plan(dep: deployments_pb2.Deployment) -> None:
    """A dry run's answer: the routing table it would produce; nothing was changed."""
    print("DRY RUN: nothing was changed. The routing table it would produce:")
    print()
    print_deployment(dep)


def event_line(event: deployments_pb2.DeploymentEvent) -> str:
    """`SEQ TIME KIND what (reason)` for one event."""
    when = render.timestamp(event.time)
    if event.kind == deployments_pb2.EVENT_KIND_ROUTING:
        what = (f"route {event.node_id} [{event.variant}] {event.allocation_id}: "
                f"{render.routing_state(event.from_routing_state)} -> {render.routing_state(event.routing_state)}")
    elif event.kind == deployments_pb2.EVENT_KIND_STATUS:
        what = f"status {render.deployment_status(event.from_status)} -> {render.deployment_status(event.status)}"
    elif event.kind == deployments_pb2.EVENT_KIND_SCALE:
        what = f"scale [{event.variant}] {event.from_allocations} -> {event.allocations} allocations"
    else:
        what = f"spec revision {event.revision}"
    return f"{event.seq:>5}  {when}  {what}" + (f"  ({event.reason})" if event.reason else "")


def deployment_events(args: argparse.Namespace, client: Client) -> int:
    resp = pages.collect(
        client.deployments.ListDeploymentEvents,
        deployments_pb2.ListDeploymentEventsRequest(deployment_id=args.deployment_id, after_seq=args.after), "events")
    last = args.after
    for event in resp.events:
        print(render.proto_json(event, indent=None) if args.json else event_line(event), flush=True)
        last = event.seq
    if not args.follow:
        return 0
    # resumes after the last listed event, so none recorded in between is missed
    stream = client.deployments.WatchDeployment(
        deployments_pb2.WatchDeploymentRequest(deployment_id=args.deployment_id, after_seq=last))
    try:
        for snap in stream:
            for event in snap.events:
                if event.seq > last:
                    print(render.proto_json(event, indent=None) if args.json else event_line(event), flush=True)
                    last = event.seq
    finally:
        stream.cancel()
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
    targets = sum(render.target_count(a) for a in dep.allocations)
    return f"{started}/{targets}"


def _status(text: str) -> int:
    names = {k.removeprefix("DEPLOYMENT_STATUS_").lower(): v for k, v in common_pb2.DeploymentStatus.items() if v}
    if text.strip().lower() not in names:
        raise ValueError(f"unknown status {text!r}: use one of {', '.join(names)}")
    return names[text.strip().lower()]


def list_deployments(args: argparse.Namespace, client: Client) -> int:
    view = common_pb2.VIEW_FULL if args.full else common_pb2.VIEW_BASIC
    request = deployments_pb2.ListDeploymentsRequest(owner=args.owner, status=args.status, model_id=args.model, view=view)
    resp = pages.collect(client.deployments.ListDeployments, request, "deployments", limit=args.limit)
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
    if dep.rollout:
        rows.append(("rollout", dep.rollout))
    for key, value in rows:
        print(f"{key + ':':<15}{value}")
    if dep.variants:
        print()
        render.table(
            ("variant", "model", "version", "weight", "threads", "queue", "instances", "resources", "env"),
            [(v.name or "-", v.model_id, v.model_version or "newest", f"{v.weight}%",
              f"{v.inference_threads or 1}x{v.model_threads or 1}", v.queue_capacity or "default",
              v.instances or "all", _resources(v.resources), ",".join(sorted(v.env)) or "-") for v in dep.variants],
        )  # env: names only, values may be secrets
    for alloc in list(dep.allocations) + list(dep.retiring):
        print()
        label = alloc.variant or dep.deployment_id
        target = render.target_count(alloc)
        removed = alloc in dep.retiring
        what = "removed by an update, retiring" if removed else f"weight {alloc.weight}%"
        print(f"allocation {label} ({what}, {render.started_count(alloc)}/{target} started):")
        data: dict[str, object] = {"allocation": render.allocation_seed(alloc)}
        if alloc.not_chosen or alloc.not_chosen_summary:
            data["not_chosen"] = render.not_chosen(alloc)
        print(render.dumps(data))


def _resources(res: common_pb2.Resources) -> str:
    parts = []
    if res.cpus:
        parts.append(f"{res.cpus:g} cpu")
    if res.memory_bytes:
        parts.append(render.size(res.memory_bytes))
    if res.gpus:
        parts.append(f"{res.gpus} gpu")
    if res.pool:
        parts.append(f"pool={res.pool}")
    return ",".join(parts) or "-"


def get_deployment(args: argparse.Namespace, client: Client) -> int:
    dep = client.deployments.GetDeployment(
        deployments_pb2.GetDeploymentRequest(deployment_id=args.deployment_id, per_node_reasons=args.per_node_reasons),
        timeout=DEFAULT_RPC_TIMEOUT)
    if args.json:
        render.print_proto(dep)
    else:
        print_deployment(dep)
    return 0


STATS_HEADERS = ("node", "routing_state", "inference_count", "average_inference_time_ms", "error_count",
                 "rejected_execution_count", "timeout_count", "cancelled_count", "pending", "throughput_last_minute",
                 "peak_throughput_per_minute", "last_access")


# What the gateway measures (GetDeploymentStatsResponse.gateway); its other
# columns are shown as "-", not as a measured 0.
GATEWAY_MEASURED = frozenset({"inference_count", "error_count", "rejected_execution_count", "timeout_count",
                              "cancelled_count", "last_access"})


def _stats_row(node: str, state: str, s: common_pb2.InferenceStats,
               measured: frozenset[str] | None = None) -> tuple[object, ...]:
    values: dict[str, object] = {
        "inference_count": s.inference_count, "average_inference_time_ms": f"{s.average_inference_time_ms:.3f}",
        "error_count": s.error_count, "rejected_execution_count": s.rejected_execution_count,
        "timeout_count": s.timeout_count, "cancelled_count": s.cancelled_count,
        "pending": s.number_of_pending_requests, "throughput_last_minute": s.throughput_last_minute,
        "peak_throughput_per_minute": s.peak_throughput_per_minute, "last_access": render.timestamp(s.last_access),
    }
    cells = [values[h] if measured is None or h in measured else "-" for h in STATS_HEADERS[2:]]
    return (node, state, *cells)


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
    if resp.HasField("gateway"):
        rows.append(_stats_row("(gateway)", "", resp.gateway, GATEWAY_MEASURED))
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
    if dep.rollout:
        parts.append(f"rollout={dep.rollout!r}")
    for alloc, retiring in [(a, False) for a in dep.allocations] + [(a, True) for a in dep.retiring]:
        label = f"{alloc.variant}:" if (len(dep.allocations) > 1 or retiring) and alloc.variant else ""
        target = render.target_count(alloc)
        parts.append(f"{'retiring ' if retiring else ''}{label}{render.allocation_state(alloc.allocation_state)} "
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
    shown = ""
    try:
        for snap in _until_deadline(stream, args):
            dep = snap.deployment
            if args.json:
                print(render.proto_json(snap, indent=None), flush=True)
            else:
                # A snapshot comes per change of the deployment or its events, also of
                # fields the line does not show (times, reasons of routes): print a
                # line only when what it shows changed.
                line = snapshot_line(dep)
                what = line.split(" ", 1)[1]
                if what != shown:
                    shown = what
                    print(line, flush=True)
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
