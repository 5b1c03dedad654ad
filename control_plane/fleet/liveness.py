"""The fleet as the control plane sees it right now: which agents are
connected, how alive each node is, and the latest statistics they sent.

Nothing here is durable. Node records (identity, capacity, labels, the
cordon flag and the newest generation) live in the store; liveness is
observed, and after a restart every known node starts SUSPECT until its
agent reconnects or the node timeout passes.

Liveness lifecycle (one `_transition` validates every change):

    READY --(stream closed, or no message for 3 heartbeats)--> SUSPECT
    SUSPECT --(agent registers again / message arrives)------> READY
    SUSPECT --(suspect for the node timeout)-----------------> LOST
    READY --(no message for the node timeout)----------------> LOST
    LOST --(agent registers again)---------------------------> READY

After a control-plane restart the recovered nodes are SUSPECT and become
LOST only after the recovery grace (default: the node timeout plus the
longest reconnect backoff an agent can be in, 36 s), not after the node
timeout: an agent that has been backing off while the control plane was
down needs that long to notice it is back, and declaring its node lost
before then would move (restart) its fixed-instance deployments for
nothing. A node whose agent registers again leaves the grace at once.

Concurrency: used only from the control plane's event loop. Each agent
session owns an outbox queue; `Connect` drains it into the stream. A new
session for the same node closes the old one (one stream per node).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from modelfleet.v1 import agent_pb2, common_pb2


class Liveness(str, enum.Enum):
    READY = "READY"
    SUSPECT = "SUSPECT"
    LOST = "LOST"


_TRANSITIONS: frozenset[tuple[Liveness, Liveness]] = frozenset(
    {
        (Liveness.READY, Liveness.SUSPECT),
        (Liveness.READY, Liveness.LOST),
        (Liveness.SUSPECT, Liveness.READY),
        (Liveness.SUSPECT, Liveness.LOST),
        (Liveness.LOST, Liveness.READY),
    }
)

SUSPECT_AFTER_HEARTBEATS = 3
# The longest delay between two reconnect attempts of an agent: the 30 s
# backoff cap plus its 20 % jitter (node_agent.agent.Backoff).
MAX_RECONNECT_DELAY_S = 36.0


class AgentSession:
    """One open AgentControl.Connect stream."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.outbox: asyncio.Queue[agent_pb2.ControlMessage | None] = asyncio.Queue()
        self.closed = False
        self.sent_digest: bytes | None = None  # the desired set last sent on this stream
        self.key_id = ""  # the API key the agent authenticated with ("" = auth off)

    def send(self, message: agent_pb2.ControlMessage) -> None:
        if not self.closed:
            self.outbox.put_nowait(message)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


@dataclass
class NodeLive:
    state: Liveness
    since: float  # clock() when the state was entered
    last_message: float  # clock() of the last message from the agent
    last_heartbeat_wall: float = 0.0  # time.time(), for display
    session: AgentSession | None = None
    grace_until: float = 0.0  # clock() before which a recovered node is not LOST
    applied_generation: int = 0
    stats: dict[str, common_pb2.InferenceStats] = field(default_factory=dict)


class Fleet:
    def __init__(
        self,
        *,
        heartbeat_interval: float,
        node_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.node_timeout = node_timeout
        self._clock = clock
        self._nodes: dict[str, NodeLive] = {}
        self.version = 0  # grows on every liveness transition (the reconciler's periodic tick watches it)

    # ---- lifecycle ------------------------------------------------------------
    def _transition(self, node_id: str, new: Liveness) -> bool:
        live = self._nodes[node_id]
        if live.state == new:
            return False
        if (live.state, new) not in _TRANSITIONS:
            raise ValueError(f"node {node_id}: invalid liveness transition {live.state.value} -> {new.value}")
        live.state = new
        live.since = self._clock()
        self.version += 1
        return True

    def recover(self, node_ids: Iterable[str], *, grace: float | None = None) -> None:
        """After a restart: every stored node is SUSPECT until it reconnects,
        and LOST only once `grace` seconds (default: node timeout + the longest
        reconnect backoff) pass without it."""
        now = self._clock()
        if grace is None:
            grace = self.node_timeout + MAX_RECONNECT_DELAY_S
        for node_id in node_ids:
            self._nodes.setdefault(
                node_id, NodeLive(state=Liveness.SUSPECT, since=now, last_message=now, grace_until=now + grace)
            )

    def attach(self, node_id: str) -> AgentSession:
        """A registered stream: the node is READY; an older stream is closed."""
        now = self._clock()
        live = self._nodes.get(node_id)
        if live is None:
            live = self._nodes[node_id] = NodeLive(state=Liveness.READY, since=now, last_message=now)
        else:
            self._transition(node_id, Liveness.READY)
            if live.session is not None:
                live.session.close()
        live.session = AgentSession(node_id)
        live.grace_until = 0.0
        live.last_message = now
        live.last_heartbeat_wall = time.time()
        return live.session

    def detach(self, session: AgentSession) -> bool:
        """The stream ended. True if it was the node's current one (node SUSPECT)."""
        session.close()
        live = self._nodes.get(session.node_id)
        if live is None or live.session is not session:
            return False
        live.session = None
        if live.state == Liveness.READY:
            self._transition(session.node_id, Liveness.SUSPECT)
        return True

    def touch(self, node_id: str, *, applied_generation: int | None = None) -> None:
        live = self._nodes[node_id]
        live.last_message = self._clock()
        live.last_heartbeat_wall = time.time()
        if applied_generation is not None:
            live.applied_generation = max(live.applied_generation, applied_generation)
        if live.state == Liveness.SUSPECT and live.session is not None:
            self._transition(node_id, Liveness.READY)

    def record_stats(self, node_id: str, stats: Iterable[agent_pb2.AllocationStats]) -> None:
        live = self._nodes[node_id]
        for item in stats:
            live.stats[item.allocation_id] = item.stats

    def sweep(self) -> list[str]:
        """Advance liveness by the clock. Returns the nodes that changed state."""
        now = self._clock()
        changed: list[str] = []
        for node_id, live in self._nodes.items():
            silent = now - live.last_message
            if live.state == Liveness.READY and silent > self.node_timeout:
                self._lose(node_id, live)
            elif live.state == Liveness.READY and silent > SUSPECT_AFTER_HEARTBEATS * self.heartbeat_interval:
                self._transition(node_id, Liveness.SUSPECT)
            elif (
                live.state == Liveness.SUSPECT
                and now - min(live.since, live.last_message) > self.node_timeout
                and now >= live.grace_until
            ):
                self._lose(node_id, live)
            else:
                continue
            changed.append(node_id)
        return changed

    def _lose(self, node_id: str, live: NodeLive) -> None:
        """LOST, and its stream (if one is still open) is closed: a LOST node comes
        back only by registering again with its complete report, never by a
        late heartbeat on the old stream (what it ran meanwhile must be fenced)."""
        self._transition(node_id, Liveness.LOST)
        if live.session is not None:
            live.session.close()
            live.session = None

    # ---- queries --------------------------------------------------------------
    def state(self, node_id: str) -> Liveness:
        live = self._nodes.get(node_id)
        return live.state if live else Liveness.LOST

    def live(self, node_id: str) -> NodeLive | None:
        return self._nodes.get(node_id)

    def sessions(self) -> list[AgentSession]:
        """Every open agent stream."""
        return [live.session for live in self._nodes.values() if live.session is not None]

    def session(self, node_id: str) -> AgentSession | None:
        live = self._nodes.get(node_id)
        return live.session if live else None

    def stats(self, node_id: str, allocation_id: str) -> common_pb2.InferenceStats | None:
        live = self._nodes.get(node_id)
        return live.stats.get(allocation_id) if live else None

    def forget_stats(self, node_id: str, allocation_id: str) -> None:
        live = self._nodes.get(node_id)
        if live:
            live.stats.pop(allocation_id, None)
