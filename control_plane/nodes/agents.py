"""The control plane's end of AgentControl.Connect, and the node API.

One stream per node. Lifecycle of a stream (each step owned here):

1. The first message must be `register`; the node id is checked, and the
   caller's agent key must be allowed to act for that node (bound to it, and
   the node not held by another active agent key: KeyService.authorize_node)
   before anything changes. A stream that registers with a join token
   (KeyService.join) instead issues the node its own agent key, sent once in
   `welcome.node_credential`; the stream then belongs to that key (revoking
   the join token leaves it open). Then the node record (identity, capacity,
   labels, the registering key) is written to the store. An agent can
   only ever speak for the node its stream registered: every later report
   is applied to that node's own allocations only.
2. The fleet attaches a session (closing an older stream of the same node),
   the agent's complete report is folded in, `welcome` and the inference
   credentials (verifiers of keys with `infer`, when auth is on) are queued,
   and a reconcile tick queues the node's complete desired set
   (`assignment`). Revoking the stream's key closes the stream.
3. A reader task folds every later `report` / `heartbeat` in while the
   response side drains the session's outbox. Messages are fenced by
   session: once a stream was replaced or closed (a newer registration of
   the node, or the node was declared LOST), whatever still arrives on it
   changes nothing; the agent's next registration carries the truth.
4. However the stream ends (agent gone, cancelled, replaced), `finally`
   detaches the session: the node is SUSPECT at once and the gateway stops
   routing to it; the liveness sweep makes it LOST after the node timeout.

Transport-free: it consumes and produces async iterators of protobuf messages.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable

from control_plane import errors, ids, paging
from control_plane.auth.access import Principal
from control_plane.auth.keys import KeyService
from control_plane.deployments import views
from control_plane.fleet.liveness import AgentSession, Fleet
from control_plane.ids import check_id
from control_plane.reconcile.hub import ChangeHub
from control_plane.reconcile.reads import ReconcileReads
from control_plane.reconcile.reconciler import now_ts
from control_plane.reconcile.reports import AgentReports
from control_plane.store import Store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import agent_pb2, nodes_pb2

log = logging.getLogger(__name__)


class AgentStreams:
    def __init__(self, *, agents: AgentReports, store: Store, fleet: Fleet, keys: KeyService | None = None) -> None:
        self.agents = agents  # what reports and liveness changes do to the records
        self.store = store
        self.fleet = fleet
        self.keys = keys  # None: authentication is off
        self._closing = False

    def close_all(self) -> None:
        """End every agent stream for a shutdown: the agents reconnect (to a
        successor, or to this control plane once it is back), and nothing is
        written for the streams that end, so no node turns SUSPECT."""
        self._closing = True
        for session in self.fleet.sessions():
            session.close()

    def _register(self, reg: agent_pb2.RegisterNode, principal: Principal | None) -> tuple[str, str]:
        """Check and record the registration; returns (key id the stream acts as, new node key token or "")."""
        info = reg.node
        check_id("register.node.node_id", info.node_id)
        if info.capacity.cpus <= 0:
            raise errors.InvalidArgument(f"register.node.capacity.cpus must be > 0, got {info.capacity.cpus:g}")
        record = self.store.get_node(info.node_id)
        key_id, node_credential = (principal.key_id if principal is not None else ""), ""
        if self.keys is not None and principal is not None and self.keys.is_join_token(principal.key_id):
            key_id, node_credential = self.keys.join(principal, info.node_id, record.agent_key_id if record else "")
        elif self.keys is not None:
            self.keys.authorize_node(principal, info.node_id, record.agent_key_id if record else "")
        if record is None:
            record = records_pb2.NodeRecord(schedulable=True, registered_at=now_ts())
        record.info.CopyFrom(info)
        if not record.info.hostname:
            record.info.hostname = socket.gethostname()
        if key_id:
            record.agent_key_id = key_id
        self.store.put_node(record)
        return key_id, node_credential

    def credentials_changed(self, revoked_key_id: str = "") -> None:
        """Send every connected agent the new inference credentials; close streams of a revoked key."""
        if self.keys is None:
            return
        message = agent_pb2.ControlMessage(credentials=self.keys.credentials())
        for session in self.fleet.sessions():
            if revoked_key_id and session.key_id == revoked_key_id:
                log.warning("closing the stream of node %s: its API key %s was revoked", session.node_id, revoked_key_id)
                session.close()
            else:
                session.send(message)

    async def connect(
        self, requests: AsyncIterator[agent_pb2.AgentMessage], *, principal: Principal | None = None
    ) -> AsyncIterator[agent_pb2.ControlMessage]:
        if self._closing:
            raise errors.Unavailable("the control plane is shutting down")
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        if first.WhichOneof("kind") != "register":
            raise errors.InvalidArgument("the first AgentMessage on a stream must be register")
        reg = first.register
        key_id, node_credential = self._register(reg, principal)
        node_id = reg.node.node_id
        session = self.fleet.attach(node_id)
        session.key_id = key_id
        log.info("node %s connected (%d allocations reported, generation %d)", node_id, len(reg.allocations), reg.applied_generation)
        welcome = agent_pb2.Welcome(node_id=node_id, node_credential=node_credential)
        welcome.heartbeat_interval.FromNanoseconds(int(self.fleet.heartbeat_interval * 1e9))
        welcome.node_timeout.FromNanoseconds(int(self.fleet.node_timeout * 1e9))
        session.send(agent_pb2.ControlMessage(welcome=welcome))
        if self.keys is not None:
            session.send(agent_pb2.ControlMessage(credentials=self.keys.credentials()))
        self.agents.observe(node_id, reg.allocations, applied_generation=reg.applied_generation, full_registration=True)
        reader = asyncio.create_task(self._read(node_id, session, requests))
        try:
            while True:
                message = await session.outbox.get()
                if message is None:
                    break
                yield message
        finally:
            reader.cancel()
            if self.fleet.detach(session) and not self._closing:
                log.warning("node %s disconnected", node_id)
                self.agents.on_liveness_change([node_id])

    async def _read(self, node_id: str, session: AgentSession, requests: AsyncIterator[agent_pb2.AgentMessage]) -> None:
        try:
            async for message in requests:
                if session.closed or self.fleet.session(node_id) is not session:
                    log.info("node %s: a message on a replaced or closed stream; ignored", node_id)
                    return
                kind = message.WhichOneof("kind")
                if kind == "heartbeat":
                    self.fleet.touch(node_id, applied_generation=message.heartbeat.applied_generation)
                    self.fleet.record_stats(node_id, message.heartbeat.stats)
                elif kind == "report":
                    self.agents.observe(node_id, message.report.allocations, applied_generation=message.report.applied_generation)
                else:
                    log.warning("node %s sent %s after registering; ignored", node_id, kind)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken stream ends the session; the agent reconnects
            log.info("stream of node %s ended: %s", node_id, exc)
        finally:
            session.close()


class NodeService:
    def __init__(self, *, store: Store, hub: ChangeHub, reads: ReconcileReads, reconcile: Callable[[], None]) -> None:
        self.store = store
        self.hub = hub
        self.reads = reads
        self.reconcile = reconcile  # a full tick: a drain or uncordon changes what every variant may take

    def _record(self, node_id: str) -> records_pb2.NodeRecord:
        return ids.lookup("node", node_id, self.store.get_node)

    def list(self, req: nodes_pb2.ListNodesRequest) -> nodes_pb2.ListNodesResponse:
        """One page of the nodes with every label of the selector and the state asked for, by node id."""
        wanted = _parse_selector(req.label_selector)
        if req.state and req.state not in nodes_pb2.NodeState.values():
            raise errors.InvalidArgument(f"state {req.state} is not a NodeState")

        def passes(node: records_pb2.NodeRecord) -> bool:
            labels = node.info.labels
            if any(labels.get(k) != v for k, v in wanted.items()):
                return False
            return not req.state or views.node_state(node.info.node_id, reads=self.reads) == req.state

        query = paging.query_fingerprint("nodes", sorted(wanted.items()), req.state)
        page = paging.paginate(
            (n for n in self.store.list_nodes() if passes(n)), key=lambda n: (n.info.node_id,), page=req.page, query=query
        )
        return nodes_pb2.ListNodesResponse(
            nodes=[views.node_view(n, reads=self.reads) for n in page.items], next_page_token=page.next_page_token
        )

    def get(self, node_id: str) -> nodes_pb2.Node:
        return views.node_view(self._record(node_id), reads=self.reads)

    def drain(self, node_id: str) -> nodes_pb2.Node:
        """Cordon the node; the reconciler moves its allocations elsewhere,
        make-before-break: a replacement is placed where it fits and each
        allocation on the drained node is stopped only once enough
        replacements are STARTED (see Reconciler._place_variant). The cordon
        is durable, so a drain in progress resumes after a restart."""
        self._set_schedulable(node_id, False)
        return self.get(node_id)

    def uncordon(self, node_id: str) -> nodes_pb2.Node:
        """Make the node schedulable again; allocations still on it stay there."""
        self._set_schedulable(node_id, True)
        return self.get(node_id)

    def _set_schedulable(self, node_id: str, schedulable: bool) -> None:
        record = self._record(node_id)
        if record.schedulable != schedulable:
            record.schedulable = schedulable
            self.store.put_node(record)
            log.info("node %s %s", node_id, "uncordoned" if schedulable else "drained (cordoned)")
        self.reconcile()
        for deployment_id in {a.deployment_id for a in self.store.list_allocations(node_id=node_id)}:
            self.hub.notify(deployment_id)


def _parse_selector(selector: str) -> dict[str, str]:
    """ "k=v,k2=v2" -> {k: v, k2: v2}; INVALID_ARGUMENT naming label_selector for anything else."""
    wanted: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in selector.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise errors.InvalidArgument(f"label_selector {selector!r}: expected key=value[,key=value...], got {part!r}")
        wanted[key.strip()] = value.strip()
    return wanted
