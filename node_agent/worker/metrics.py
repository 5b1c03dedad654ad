"""Prometheus metrics of one inference worker, served on `--metrics-port`.

Everything is read at scrape time from the worker's `Stats` (the counters
the KServe statistics use, plus cumulative histograms) and its queue, by a
custom collector, so serving a call pays nothing for metrics beyond the few
additions `Stats` makes under its lock. Metric families (labels
`deployment` = the served name, `variant` = the version):

- modelfleet_worker_requests_total{status}: ModelInfer calls by final gRPC status
- modelfleet_worker_inferences_total, modelfleet_worker_model_errors_total
- modelfleet_worker_rejected_total{reason="queue_full"}, modelfleet_worker_timeouts_total,
  modelfleet_worker_cancelled_total
- modelfleet_worker_queue_seconds / modelfleet_worker_compute_seconds: histograms
  per call of the time waiting in the queue and the model run it was part of
- modelfleet_worker_batch_size: histogram of calls per model run
- modelfleet_worker_queue_depth (waiting), modelfleet_worker_running, modelfleet_worker_ready
- modelfleet_worker_rss_bytes, plus the standard process_* metrics

The HTTP server is prometheus_client's, on its own daemon thread; the
collector only takes the Stats and queue locks, so it is safe off the loop.
The agent federates these (adding node and allocation labels) on its own
/metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from node_agent.worker.service import WorkerService, rss_bytes
from node_agent.worker.stats import HistogramSnapshot

_LABELS = ["deployment", "variant"]


def _bound(value: float) -> str:
    return str(floatToGoString(value))  # "2.0", "5e-05": the labels prometheus_client's own histograms use


def _histogram(name: str, doc: str, snap: HistogramSnapshot, values: list[str]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=_LABELS)
    buckets = [(_bound(b), float(c)) for b, c in zip(snap.bounds, snap.cumulative, strict=False)]
    buckets.append(("+Inf", float(snap.cumulative[-1])))
    family.add_metric(values, buckets, snap.sum)
    return family


class WorkerCollector(Collector):
    """Reads one WorkerService at scrape time."""

    def __init__(self, service: WorkerService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service = self._service
        values = [service.name, service.version]
        snap = service.stats.snapshot(pending=0)
        statuses = CounterMetricFamily(
            "modelfleet_worker_requests", "ModelInfer calls by final gRPC status", labels=[*_LABELS, "status"]
        )
        for status, count in sorted(service.stats.status_counts().items()):
            statuses.add_metric([*values, status], count)
        yield statuses

        def counter(name: str, doc: str, value: float, **extra: str) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=[*_LABELS, *extra])
            family.add_metric([*values, *extra.values()], value)
            return family

        yield counter("modelfleet_worker_inferences", "calls the model completed", snap.inference_count)
        yield counter("modelfleet_worker_model_errors", "calls that failed in the model", snap.error_count)
        yield counter(
            "modelfleet_worker_rejected", "calls refused at once", snap.rejected_execution_count, reason="queue_full"
        )
        yield counter("modelfleet_worker_timeouts", "calls whose deadline passed before they ran", snap.timeout_count)
        yield counter("modelfleet_worker_cancelled", "queued calls their client cancelled", snap.cancelled_count)
        hists = service.stats.histograms()
        yield _histogram("modelfleet_worker_queue_seconds", "time a call waited in the queue", hists["queue"], values)
        yield _histogram(
            "modelfleet_worker_compute_seconds", "model run time of the run that served a call", hists["compute"], values
        )
        yield _histogram("modelfleet_worker_batch_size", "calls served by one model run", hists["batch"], values)
        waiting, running = service.queue.depth()
        for name, doc, value in (
            ("modelfleet_worker_queue_depth", "calls waiting in the queue", waiting),
            ("modelfleet_worker_running", "calls the model threads are running", running),
            ("modelfleet_worker_ready", "1 while the worker takes calls", 1 if service.ready else 0),
            ("modelfleet_worker_rss_bytes", "resident memory of the worker process", rss_bytes()),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=_LABELS)
            gauge.add_metric(values, value)
            yield gauge


def serve_metrics(service: WorkerService, *, host: str, port: int) -> int:
    """Start the /metrics HTTP server on its own thread; returns the bound port."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(service))
    ProcessCollector(registry=registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
