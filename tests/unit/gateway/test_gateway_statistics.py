"""Unit test of how the gateway sums its workers' ModelStatistics entries
(control_plane.gateway.statistics.add): counts and ns durations add up,
batch_stats merge by batch size, last_inference is the latest."""

from __future__ import annotations

from control_plane.gateway import statistics
from modelfleet.inference import grpc_service_pb2 as pb


def entry(n: int, *, ns: int, last: int, batches: dict[int, int]) -> pb.ModelStatistics:
    out = pb.ModelStatistics(name="d", version="1", inference_count=n, execution_count=sum(batches.values()), last_inference=last)
    for part in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        getattr(out.inference_stats, part).count = n
        getattr(out.inference_stats, part).ns = ns
    out.inference_stats.fail.count = 1
    for size, runs in batches.items():
        out.batch_stats.add(batch_size=size).compute_infer.count = runs
    return out


def test_two_workers_add_up_and_batches_merge_by_size() -> None:
    total = pb.ModelStatistics(name="d", version="1")
    statistics.add(total, entry(4, ns=100, last=5, batches={1: 2, 2: 1}))
    statistics.add(total, entry(6, ns=300, last=9, batches={4: 1, 1: 2}))
    statistics._sort_batches(total)
    assert (total.inference_count, total.execution_count, total.last_inference) == (10, 6, 9)
    assert (total.inference_stats.queue.count, total.inference_stats.queue.ns) == (10, 400)
    assert total.inference_stats.fail.count == 2
    assert [(b.batch_size, b.compute_infer.count) for b in total.batch_stats] == [(1, 4), (2, 1), (4, 1)]
