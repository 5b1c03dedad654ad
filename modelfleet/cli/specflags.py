"""The deployment spec flags shared by `deployments start` and `deployments update`.

`--variant model[:version]=weight` (repeatable) names the model versions of
a deployment with their traffic weights (percent, summing to 100); the
per-variant flags (threads, queue, instances, resources, env) then apply to
every variant. Without `--variant`, `start` takes one MODEL and `update`
changes the named fields of every variant. `build_spec` turns the flags into
the request fields plus the update_mask paths that were given.
"""

from __future__ import annotations

import argparse
import re

from google.protobuf import duration_pb2

from modelfleet.cli import autoscaleflags
from modelfleet.cli.parsing import arg_type, parse_bytes, parse_duration, parse_key_value, positive_int
from modelfleet.v1 import deployments_pb2

_DURATION = arg_type(parse_duration, "duration")
_COUNT = arg_type(positive_int, "count")
_VARIANT = re.compile(r"^(?P<model>[^:=\s]+)(?::v?(?P<version>\d+))?=(?P<weight>\d+)$")

# flags copied into every variant (or sent as single-model fields): name -> field
PER_VARIANT = ("model_version", "inference_threads", "model_threads", "queue_capacity", "instances")
DEPLOYMENT_WIDE = ("description", "traffic_limit_qps", "max_unavailable")


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def parse_variant(text: str) -> deployments_pb2.VariantSpec:
    """`model[:version]=weight`, e.g. `resnet:2=50` or `resnet=100` (version 0 = newest)."""
    match = _VARIANT.match(text.strip())
    if not match:
        raise ValueError(f"invalid variant {text!r} (expected model[:version]=weight, e.g. resnet:2=50)")
    weight = int(match.group("weight"))
    if weight > 100:
        raise ValueError(f"invalid variant {text!r}: weight {weight} is more than 100")
    return deployments_pb2.VariantSpec(
        model_id=match.group("model"), model_version=int(match.group("version") or 0), weight=weight
    )


def add_flags(p: argparse.ArgumentParser, *, update: bool) -> None:
    """Flags shared by start and update (default None = not given)."""
    p.add_argument("--variant", action="append", type=arg_type(parse_variant, "variant"), metavar="MODEL[:VERSION]=WEIGHT",
                   help="a model version and its traffic weight in percent (repeatable; weights sum to 100)")
    p.add_argument("--model-version", type=_COUNT, help="0 = newest NORMAL version")
    p.add_argument("--inference-threads", type=_COUNT, help="threads per inference (default 1)")
    p.add_argument("--model-threads", type=_COUNT, help="inferences run at once per node (default 1)")
    p.add_argument("--queue-capacity", type=_COUNT, help="waiting requests per node before rejecting (default 1024)")
    p.add_argument("--instances", type=_COUNT, help="number of nodes; 0 = every eligible node (default)")
    p.add_argument("--description")
    p.add_argument("--cpus", type=float, help="CPUs per node (default inference_threads x model_threads)")
    p.add_argument("--memory", type=arg_type(parse_bytes, "size"), help="memory per node, e.g. 2Gi")
    p.add_argument("--gpus", type=_COUNT, help="GPUs per node (the worker gets CUDA_VISIBLE_DEVICES)")
    p.add_argument("--pool", help="only nodes labelled pool=POOL")
    p.add_argument("--env", action="append", type=arg_type(parse_key_value, "KEY=VALUE"), metavar="KEY=VALUE",
                   help="environment variable of the worker (repeatable)")
    p.add_argument("--auto-stop", type=_DURATION, metavar="DURATION",
                   help="stop after 1h..24h (whole hours) from the start" + ("; 0 = never" if update else ""))
    p.add_argument("--traffic-limit", "--traffic-limit-qps", dest="traffic_limit_qps", type=float, metavar="QPS",
                   help="calls per second through the gateway; 0 = no limit")
    p.add_argument("--max-unavailable", type=_COUNT, metavar="N",
                   help="a rolling update with no room beside the old workers may stop up to N of them before "
                        "their replacements started (default 0: it waits, naming the shortfall; at most --instances)")
    autoscaleflags.add_flags(p, update=update)
    p.add_argument("--request-id", help="idempotency key for retries")
    p.add_argument("--dry-run", action="store_true", default=None,
                   help="show the routing table it would produce, with a reason for every node not chosen; change nothing")


def build_spec(args: argparse.Namespace, *, update: bool = False) -> tuple[deployments_pb2.StartDeploymentRequest, list[str]]:
    """The request fields from the flags, and the update_mask paths that were given.

    With --variant, the per-variant flags go into every variant and the mask
    holds `variants`; without it they are single-model fields (one path each).
    In an update a variant's instances 0 would mean "keep", so --instances 0
    is sent as -1 ("every eligible node").
    """
    req = deployments_pb2.StartDeploymentRequest()
    given: list[str] = []
    per_variant: dict[str, object] = {}
    for name in PER_VARIANT:
        value = getattr(args, name, None)
        if value is not None:
            per_variant[name] = value
    resources = deployments_pb2.VariantSpec().resources
    res_given = False
    for flag, field in (("cpus", "cpus"), ("memory", "memory_bytes"), ("gpus", "gpus"), ("pool", "pool")):
        value = getattr(args, flag, None)
        if value is not None:
            setattr(resources, field, value)
            res_given = True
    env = dict(args.env or [])
    variants = list(getattr(args, "variant", None) or [])
    if variants:
        if "model_version" in per_variant:
            raise ValueError("--model-version cannot be used with --variant (give each version in --variant)")
        for variant in variants:
            for name, value in per_variant.items():
                setattr(variant, name, -1 if update and name == "instances" and value == 0 else value)
            if res_given:
                variant.resources.CopyFrom(resources)
            variant.env.update(env)
            req.variants.append(variant)
        given.append("variants")
    else:
        for name, value in per_variant.items():
            setattr(req, name, value)
            given.append(name)
        if res_given:
            req.resources.CopyFrom(resources)
            given.append("resources")
        if env:
            req.env.update(env)
            given.append("env")
    for name in DEPLOYMENT_WIDE:
        value = getattr(args, name, None)
        if value is not None:
            setattr(req, name, value)
            given.append(name)
    if args.auto_stop is not None:
        if args.auto_stop > 0:
            req.auto_stop.CopyFrom(duration(args.auto_stop))
        given.append("auto_stop")
    autoscaleflags.apply(args, req, given)
    return req, given
