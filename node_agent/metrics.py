"""The node agent's Prometheus /metrics (`modelfleet-agent --metrics-port`).

One endpoint per node serves:

- the agent's own view, read on the event loop at scrape time
  (`asyncio.run_coroutine_threadsafe`, so the scrape thread never touches
  loop-owned state): modelfleet_allocation_routing_state{deployment, variant,
  allocation, node, state} (1 for the allocation's current routing state, 0
  for the others), modelfleet_allocation_restarts_total, modelfleet_agent_connected,
  modelfleet_agent_applied_generation;
- every STARTED worker's own metrics (node_agent.worker.metrics: request
  counts by status, rejections, timeouts, queue and compute time
  histograms, batch sizes, queue depth, RSS), fetched from the port in the
  worker's ready file and re-labelled with `node` and `allocation`, so one
  scrape of the agent covers the node (workers stay off the network).

A worker that does not answer within `WORKER_SCRAPE_TIMEOUT` is skipped and
counted in modelfleet_agent_worker_scrape_errors_total. The HTTP server is
prometheus_client's, on its own daemon thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from modelfleet.v1 import common_pb2
from node_agent.procs import connect_address
from node_agent.supervisor import WorkerState

if TYPE_CHECKING:
    from node_agent.agent import Agent

log = logging.getLogger(__name__)

WORKER_SCRAPE_TIMEOUT = 2.0
SNAPSHOT_TIMEOUT = 5.0
ROUTING_STATES = [
    name.removeprefix("ROUTING_STATE_")
    for name, value in common_pb2.RoutingState.items()
    if value != common_pb2.ROUTING_STATE_UNSPECIFIED
]


@dataclass(frozen=True)
class _Allocation:
    allocation_id: str
    deployment_id: str
    variant: str
    state: str  # routing state name
    restarts: int
    metrics_url: str  # "" when the worker serves none (or is not STARTED)


@dataclass(frozen=True)
class _Snapshot:
    node_id: str
    connected: bool
    applied_generation: int
    allocations: list[_Allocation]


def _metrics_port(ready_file: Path) -> int:
    try:
        return int(json.loads(ready_file.read_text()).get("metrics_port", 0))
    except (OSError, ValueError, TypeError):
        return 0


class AgentCollector(Collector):
    """See the module docstring."""

    def __init__(self, agent: Agent, *, loop: asyncio.AbstractEventLoop, worker_host: str) -> None:
        self._agent = agent
        self._loop = loop
        self._worker_host = worker_host
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="metrics-scrape")
        self._scrape_errors = 0

    async def _snapshot(self) -> _Snapshot:
        agent = self._agent
        allocations = []
        for handle in agent.allocations.handles.values():
            report = handle.report()
            port = _metrics_port(handle.ready_file) if handle.state is WorkerState.STARTED else 0
            url = f"http://{connect_address(self._worker_host, port)}/metrics" if port else ""
            state = common_pb2.RoutingState.Name(report.routing_state).removeprefix("ROUTING_STATE_")
            allocations.append(
                _Allocation(handle.allocation_id, handle.spec.deployment_id, handle.spec.variant, state, handle.restarts, url)
            )
        return _Snapshot(agent.node_id, agent.connected, agent.applied_generation, allocations)

    def _fetch(self, url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=WORKER_SCRAPE_TIMEOUT) as reply:  # noqa: S310 (http to our own worker)
                body: bytes = reply.read()
                return body.decode("utf-8")
        except (OSError, ValueError) as exc:
            log.debug("scrape of %s failed: %s", url, exc)
            return None

    def collect(self) -> Iterator[Metric]:
        snap = asyncio.run_coroutine_threadsafe(self._snapshot(), self._loop).result(SNAPSHOT_TIMEOUT)
        node = snap.node_id
        labels = ["deployment", "variant", "allocation", "node"]
        routing = GaugeMetricFamily(
            "modelfleet_allocation_routing_state", "1 for the allocation's routing state on this node, else 0",
            labels=[*labels, "state"],
        )  # fmt: skip
        restarts = CounterMetricFamily("modelfleet_allocation_restarts", "worker restarts after crashes", labels=labels)
        for a in snap.allocations:
            values = [a.deployment_id, a.variant, a.allocation_id, node]
            for state in ROUTING_STATES:
                routing.add_metric([*values, state], 1.0 if state == a.state else 0.0)
            restarts.add_metric(values, a.restarts)
        yield routing
        yield restarts
        for name, doc, value in (
            ("modelfleet_agent_connected", "1 while the stream to the control plane is open and welcomed", snap.connected),
            ("modelfleet_agent_applied_generation", "the newest desired-set generation applied", snap.applied_generation),
            ("modelfleet_agent_allocations", "allocations on this node", len(snap.allocations)),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["node"])
            gauge.add_metric([node], float(value))
            yield gauge
        yield from self._federate(snap)

    def _federate(self, snap: _Snapshot) -> Iterator[Metric]:
        scraped = [a for a in snap.allocations if a.metrics_url]
        texts = list(self._pool.map(self._fetch, [a.metrics_url for a in scraped]))
        merged: dict[str, Metric] = {}
        for alloc, text in zip(scraped, texts, strict=True):
            if text is None:
                self._scrape_errors += 1
                continue
            extra = {"node": snap.node_id, "allocation": alloc.allocation_id}
            for family in text_string_to_metric_families(text):
                if not family.name.startswith("modelfleet_"):
                    continue  # process_* of each worker: its RSS is modelfleet_worker_rss_bytes
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                for s in family.samples:
                    target.samples.append(Sample(s.name, {**s.labels, **extra}, s.value, s.timestamp, s.exemplar))
        yield from merged.values()
        errors = CounterMetricFamily(
            "modelfleet_agent_worker_scrape_errors", "worker /metrics scrapes that failed", labels=["node"]
        )
        errors.add_metric([snap.node_id], self._scrape_errors)
        yield errors


def serve_metrics(agent: Agent, *, loop: asyncio.AbstractEventLoop, host: str, port: int, worker_host: str) -> int:
    """Start the agent's /metrics HTTP server on its own thread; returns the bound port."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent, loop=loop, worker_host=worker_host))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
