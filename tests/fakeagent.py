"""A scripted node agent for tests: one real AgentControl.Connect stream over
a real socket, with the messages written and read by the test itself.

    agent = FakeAgent(address, token, "node-x")
    agent.wait_for("assignment")
    agent.report([...], generation=...)

It runs no workers: tests use it to start deployments without worker
processes, to report whatever they like (stale or forged reports), and to
register as a node the key does not own. Received messages are kept in
`messages`; a stream the control plane refused ends with `error` set.
`cooperate(address)` makes it behave: it heartbeats, and reports every
allocation it is assigned as STARTED at `address` (a worker the test runs).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc
from cluster import authed_channel, wait_until

from modelfleet.v1 import agent_pb2, agent_pb2_grpc, common_pb2


class FakeAgent:
    def __init__(
        self,
        address: str,
        token: str,
        node_id: str,
        *,
        cpus: float = 8,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.node_id = node_id
        self.channel = authed_channel(address, token, credentials=credentials)
        self._out: queue.Queue[agent_pb2.AgentMessage | None] = queue.Queue()
        self.messages: list[agent_pb2.ControlMessage] = []
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self._worker_address = ""
        node = agent_pb2.NodeInfo(
            node_id=node_id, hostname=f"host-{node_id}",
            capacity=common_pb2.NodeCapacity(cpus=cpus, memory_bytes=16 << 30),
        )  # fmt: skip
        self._out.put(agent_pb2.AgentMessage(register=agent_pb2.RegisterNode(node=node)))
        self.call = agent_pb2_grpc.AgentControlStub(self.channel).Connect(self._requests())
        self._reader = threading.Thread(target=self._read, name=f"fake agent {node_id}", daemon=True)
        self._reader.start()

    def cooperate(self, worker_address: str, *, heartbeat: float = 0.5) -> None:
        """Heartbeat every `heartbeat` s; report each assignment's allocations STARTED at worker_address."""
        self._worker_address = worker_address
        for message in self.of_kind("assignment"):
            self._started(message.assignment)

        def beat() -> None:
            while not self.ended.wait(heartbeat):
                generation = max((m.assignment.generation for m in self.of_kind("assignment")), default=0)
                self._out.put(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(applied_generation=generation)))

        threading.Thread(target=beat, name=f"fake heartbeats {self.node_id}", daemon=True).start()

    def _started(self, assignment: agent_pb2.Assignment) -> None:
        reports = [
            agent_pb2.AllocationReport(allocation_id=spec.allocation_id, deployment_id=spec.deployment_id,
                                       routing_state=common_pb2.ROUTING_STATE_STARTED, worker_address=self._worker_address)
            for spec in assignment.allocations
        ]  # fmt: skip
        for report in reports:
            report.started_at.GetCurrentTime()
        self.report(reports, generation=assignment.generation)

    def _requests(self) -> Iterator[agent_pb2.AgentMessage]:
        while (message := self._out.get()) is not None:
            yield message

    def _read(self) -> None:
        try:
            for message in self.call:
                self.messages.append(message)
                if self._worker_address and message.WhichOneof("kind") == "assignment":
                    self._started(message.assignment)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def of_kind(self, kind: str) -> list[agent_pb2.ControlMessage]:
        return [m for m in self.messages if m.WhichOneof("kind") == kind]

    def wait_for(self, kind: str, *, count: int = 1, timeout: float = 20) -> agent_pb2.ControlMessage:
        """The count-th message of kind (raising if the stream ends first)."""

        def got() -> agent_pb2.ControlMessage | None:
            found = self.of_kind(kind)
            if len(found) >= count:
                return found[count - 1]
            if self.ended.is_set():
                raise AssertionError(f"stream of {self.node_id} ended: {self.error and self.error.details()}")
            return None

        return wait_until(got, timeout=timeout, what=f"{kind} #{count} for {self.node_id}")

    def assignment(self) -> agent_pb2.Assignment:
        return self.wait_for("assignment").assignment if not self.of_kind("assignment") else self.of_kind("assignment")[-1].assignment

    def report(self, allocations: list[agent_pb2.AllocationReport], *, generation: int) -> None:
        self._out.put(
            agent_pb2.AgentMessage(report=agent_pb2.RoutingReport(applied_generation=generation, allocations=allocations))
        )

    def close(self) -> None:
        self._out.put(None)
        self.ended.wait(10)
        self.channel.close()
