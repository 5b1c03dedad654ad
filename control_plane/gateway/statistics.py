"""The gateway's ModelStatistics: Triton's entry per deployment and model
version number (control_plane.gateway.versions), summed over the started
workers serving it, each asked for its own ModelStatistics (measured in the
worker: success, fail, queue, compute_input, compute_infer, compute_output,
counts and durations in ns; execution_count and batch_stats).

The workers are asked concurrently over the gateway's channels with their
worker token and a short timeout; a worker that does not answer in time is
left out of the sum (logged), so one stuck worker never blocks the call.
Workers that stopped take their counters with them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence

import grpc

from control_plane.gateway import versions
from control_plane.routes import Route, RouteSource
from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.store.v1 import records_pb2

log = logging.getLogger(__name__)

WORKER_TIMEOUT_S = 2.0
_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
_BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")

Method = Callable[[str, str], grpc.aio.UnaryUnaryMultiCallable]  # (address, method name) -> raw-bytes callable


async def model_statistics(
    *, source: RouteSource, method: Method, recs: Sequence[records_pb2.DeploymentRecord], version: str
) -> pb.ModelStatisticsResponse:
    """One entry per (deployment, model version number) that `version` selects, in order."""
    out = pb.ModelStatisticsResponse()
    pending: list[tuple[pb.ModelStatistics, list[Route]]] = []
    for rec in recs:
        by_number: dict[str, set[str]] = collections.defaultdict(set)
        for variant in versions.select(rec, version):
            by_number[versions.number(variant)].add(variant.name)
        routes = source.routes(rec.deployment_id)
        for number, names in sorted(by_number.items(), key=lambda item: int(item[0])):
            entry = out.model_stats.add(name=rec.deployment_id, version=number)
            pending.append((entry, [r for r in routes if r.variant in names]))
    answers = await asyncio.gather(*(_ask(method, route, entry.name) for entry, routes in pending for route in routes))
    it = iter(answers)
    for entry, routes in pending:
        for _ in routes:
            answer = next(it)
            if answer is not None:
                add(entry, answer)
        _sort_batches(entry)
    return out


async def _ask(method: Method, route: Route, name: str) -> pb.ModelStatistics | None:
    metadata = (("authorization", f"Bearer {route.token}"),) if route.token else None
    request = pb.ModelStatisticsRequest(name=name).SerializeToString()
    try:
        reply = await method(route.address, "ModelStatistics")(request, timeout=WORKER_TIMEOUT_S, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        log.info("worker %s gave no statistics (%s: %s); left out", route.address, exc.code().name, exc.details())
        return None
    stats = pb.ModelStatisticsResponse.FromString(reply).model_stats
    return stats[0] if stats else None


def add(total: pb.ModelStatistics, one: pb.ModelStatistics) -> None:
    """Add one worker's entry into total: counts and durations summed, batch_stats by batch size."""
    total.inference_count += one.inference_count
    total.execution_count += one.execution_count
    total.last_inference = max(total.last_inference, one.last_inference)
    for field in _DURATIONS:
        mine, theirs = getattr(total.inference_stats, field), getattr(one.inference_stats, field)
        mine.count += theirs.count
        mine.ns += theirs.ns
    batches = {b.batch_size: b for b in total.batch_stats}
    for batch in one.batch_stats:
        into = batches.get(batch.batch_size)
        if into is None:
            into = batches[batch.batch_size] = total.batch_stats.add(batch_size=batch.batch_size)
        for field in _BATCH_DURATIONS:
            getattr(into, field).count += getattr(batch, field).count
            getattr(into, field).ns += getattr(batch, field).ns


def _sort_batches(entry: pb.ModelStatistics) -> None:
    ordered = [pb.InferBatchStatistics.FromString(b.SerializeToString()) for b in sorted(entry.batch_stats, key=lambda b: b.batch_size)]
    del entry.batch_stats[:]
    entry.batch_stats.extend(ordered)
