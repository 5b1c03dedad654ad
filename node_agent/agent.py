"""The node agent's stream client: one AgentControl.Connect stream to the control plane.

Design
------
The protocol is level-triggered (DESIGN.md "Agent protocol"). Each stream
starts with ``register`` (node info, the applied generation and every
allocation this agent has, adopted workers included). The control plane
answers ``welcome`` (heartbeat interval, node timeout) and ``assignment``
messages, each the node's complete desired set with a generation that only
grows. An assignment newer than the applied generation is handed to the
:class:`~node_agent.allocations.Allocations` (which starts what is missing,
stops what is absent and never restarts what is wanted); older or equal ones
are ignored. Every state change marks the agent dirty; the stream's single
writer coalesces bursts (``REPORT_COALESCE`` seconds) into one ``report``
with the complete list, and sends a ``heartbeat`` with each STARTED worker's
statistics every interval ± 10 %.

The stream is reconnected with backoff 1 s × 1.6 ± 20 % (capped at 30 s
before jitter), reset once a registration is welcomed; every attempt opens a
fresh channel so only this backoff governs reconnects. Workers keep running
while the stream is down. Models are fetched by :class:`ModelCache` over
``ModelRegistry.DownloadModel`` into ``DIR/models/tmp`` and renamed to
``DIR/models/<sha256>`` only once the digest matches.

Security: every call carries the agent's API key (`authorization: Bearer`,
a key with the `agent` privilege; the token file is reread on every
reconnect so a rotated key needs no restart), over TLS when configured (and
with a client certificate for mTLS). The control plane lets the key act for
this node only. With a join token the welcome carries this node's own key
(``node_credential``): it is written to DIR/node.key (0600), the stream is
reopened with it at once, and it wins over the token file and
MODELFLEET_TOKEN from then on, restarts included. A refusal for good
(UNAUTHENTICATED / PERMISSION_DENIED on the stream) is logged once at ERROR,
naming the key's file, and ends ``run()`` with ``refused`` set (the process
then exits EXIT_REFUSED); UNAVAILABLE and the rest are retried with backoff. ``credentials`` messages (verifiers of keys that may call
workers directly) are written to DIR/workers/credentials.pb for the workers.

Concurrency model
-----------------
One asyncio loop. Per stream session: the reader (this task) applies control
messages; one writer task is the only code that calls ``call.write`` (gRPC
forbids concurrent writes). Allocation callbacks only bump a sequence number
and set an event, so they never block. ``run()`` owns shutdown: it stops all
workers while the session (if any) keeps reporting STOPPING then STOPPED,
waits for that last report to be written, then half-closes the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from modelfleet.v1 import agent_pb2, agent_pb2_grpc, models_pb2, models_pb2_grpc
from node_agent.allocations import Allocations
from node_agent.supervisor import PermanentStartError, SupervisorConfig
from node_agent.worker_security import write_private

log = logging.getLogger(__name__)

REPORT_COALESCE = 0.05  # seconds a report waits for more changes to join it
DEFAULT_HEARTBEAT = 5.0
HEARTBEAT_JITTER = 0.10
STATS_TIMEOUT = 1.0  # at most, per heartbeat
KEEPALIVE_TIME = 10.0  # RELIABILITY.md: keepalive on the agent stream, 10 s time, 10 s timeout
KEEPALIVE_TIMEOUT = 10.0
MAX_DOWNLOAD_MESSAGE = 64 * 1024 * 1024
NODE_CREDENTIAL_FILE = "node.key"
_REFUSED_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


def keepalive_options(time_s: float = KEEPALIVE_TIME, timeout_s: float = KEEPALIVE_TIMEOUT) -> list[tuple[str, int]]:
    """Channel options: ping every time_s even without calls, give up after timeout_s.

    The control plane tolerates pings down to 5 s apart (2 strikes), so the
    10 s default never draws a GOAWAY."""
    return [
        ("grpc.keepalive_time_ms", int(time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


KEEPALIVE_OPTIONS = keepalive_options()
# Codes for which a download retry cannot help.
_PERMANENT_DOWNLOAD_CODES = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


@dataclass
class Backoff:
    """Reconnect delays: initial × multiplier^n, capped, then ± jitter (gRPC's algorithm)."""

    initial: float = 1.0
    multiplier: float = 1.6
    jitter: float = 0.2
    cap: float = 30.0
    _attempt: int = field(default=0, init=False)

    def next(self) -> float:
        base = min(self.cap, self.initial * self.multiplier**self._attempt)
        self._attempt += 1
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        self._attempt = 0


def jittered(interval: float, jitter: float = HEARTBEAT_JITTER) -> float:
    return interval * random.uniform(1 - jitter, 1 + jitter)


LEADER_METADATA = "modelfleet-leader"  # a standby's refusal names the leader here


@dataclass(frozen=True)
class ControlPlaneLink:
    """How to reach the control plane: address(es), TLS and the agent's API key.

    `target` is HOST:PORT or several, comma-separated (control-plane
    replicas): calls go to the current one; `move()` goes to the leader a
    standby named, if listed, else to the next address."""

    target: str
    credentials: grpc.ChannelCredentials | None = None  # TLS (None = plaintext)
    token: str = ""  # MODELFLEET_TOKEN
    token_file: Path | None = None  # wins over token; reread at every connect
    credential_file: Path | None = None  # this node's own key (DIR/node.key): wins over both
    _at: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)  # index of the current target

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.target.split(",") if t.strip()) or (self.target,)

    @property
    def current(self) -> str:
        targets = self.targets
        return targets[self._at[0] % len(targets)]

    def move(self, leader: str = "") -> str:
        """Go to `leader` if it is one of the targets, else to the next target; the new current one."""
        targets = self.targets
        self._at[0] = targets.index(leader) if leader in targets else (self._at[0] + 1) % len(targets)
        return self.current

    def source(self) -> str:
        """Where the key sent now comes from, for messages."""
        if self.credential_file is not None and self.credential_file.exists():
            return f"the node credential file {self.credential_file}"
        if self.token_file is not None:
            return f"the token file {self.token_file}"
        return "MODELFLEET_TOKEN" if self.token else "nowhere (no API key was sent)"

    def channel(self, options: list[tuple[str, int]]) -> grpc.aio.Channel:
        if self.credentials is not None:
            return grpc.aio.secure_channel(self.current, self.credentials, options=options)
        return grpc.aio.insecure_channel(self.current, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        token = self.token
        if self.credential_file is not None and self.credential_file.exists():
            try:
                token = self.credential_file.read_text().strip()
            except OSError as exc:
                log.error("cannot read the node credential file %s: %s", self.credential_file, exc.strerror)
        elif self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                log.error("cannot read the agent token file %s: %s", self.token_file, exc.strerror)
        return (("authorization", f"Bearer {token}"),) if token else None


class ModelCache:
    """Content-addressed model files in DIR/models, downloaded on a miss.

    Concurrent fetches of one sha256 share a lock, so a model is downloaded
    once however many allocations need it.
    """

    def __init__(self, *, link: ControlPlaneLink, models_dir: Path, options: list[tuple[str, int]] | None = None) -> None:
        self._link = link
        self._options = [*(options or KEEPALIVE_OPTIONS), ("grpc.max_receive_message_length", MAX_DOWNLOAD_MESSAGE)]
        self._dir = models_dir
        self._tmp = models_dir / "tmp"
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():  # partial downloads of a previous agent
            leftover.unlink(missing_ok=True)

    async def fetch(self, spec: agent_pb2.AllocationSpec) -> Path:
        """The verified model file of spec.

        Raises:
            PermanentStartError: bad sha256 in the spec, digest mismatch or a permanent RPC error.
            Exception: anything else is transient (the caller retries).
        """
        sha = spec.model_sha256.lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise PermanentStartError(f"model download: invalid model_sha256 {spec.model_sha256!r}")
        final = self._dir / sha
        if final.exists():
            return final
        async with self._locks[sha]:
            if not final.exists():
                await self._download(spec, sha, final)
        return final

    async def _download(self, spec: agent_pb2.AllocationSpec, sha: str, final: Path) -> None:
        part = self._tmp / f"{sha}.{uuid.uuid4().hex[:8]}.part"
        digest, size = hashlib.sha256(), 0
        started = time.monotonic()
        log.info("downloading model %s version %d (%s)", spec.model_id, spec.model_version, sha)
        try:
            async with self._link.channel(self._options) as channel:
                stub = models_pb2_grpc.ModelRegistryStub(channel)
                request = models_pb2.DownloadModelRequest(model_id=spec.model_id, version=spec.model_version)
                with open(part, "wb") as out:
                    async for reply in stub.DownloadModel(request, metadata=self._link.metadata()):
                        out.write(reply.chunk)
                        digest.update(reply.chunk)
                        size += len(reply.chunk)
                    out.flush()
                    os.fsync(out.fileno())
            got = digest.hexdigest()
            if got != sha:
                raise PermanentStartError(
                    f"model download: sha256 mismatch for model {spec.model_id} version {spec.model_version}: "
                    f"expected {sha}, got {got} ({size} bytes)"
                )
            os.replace(part, final)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _PERMANENT_DOWNLOAD_CODES:
                raise PermanentStartError(f"model download: {exc.code().name}: {exc.details()}") from exc
            raise
        finally:
            part.unlink(missing_ok=True)
        log.info("downloaded model %s (%d bytes) in %.2f s", sha, size, time.monotonic() - started)


@dataclass(frozen=True)
class AgentConfig:
    """What the agent needs to know; built by node_agent.main from flags and detection."""

    control_plane: str
    data_dir: Path
    node: agent_pb2.NodeInfo
    supervisor: SupervisorConfig
    backoff: Backoff = field(default_factory=Backoff)
    credentials: grpc.ChannelCredentials | None = None  # TLS to the control plane
    token: str = ""
    token_file: Path | None = None
    credential_file: Path | None = None  # where a join gives this node its own key

    @property
    def link(self) -> ControlPlaneLink:
        return ControlPlaneLink(self.control_plane, self.credentials, self.token, self.token_file, self.credential_file)
    keepalive_time: float = KEEPALIVE_TIME
    keepalive_timeout: float = KEEPALIVE_TIMEOUT

    @property
    def channel_options(self) -> list[tuple[str, int]]:
        return keepalive_options(self.keepalive_time, self.keepalive_timeout)


class Agent:
    """The node agent: stream client, reconnect loop and shutdown around the node's Allocations."""

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._link = config.link
        self.models = ModelCache(link=self._link, models_dir=config.data_dir / "models", options=config.channel_options)
        self.allocations = Allocations(
            config=config.supervisor, fetch_model=self.models.fetch, on_change=self._mark_dirty
        )
        self.applied_generation = 0
        self._heartbeat_interval = DEFAULT_HEARTBEAT
        self._dirty = False  # a change not yet carried by a report
        self._wake = asyncio.Event()  # wakes the writer: a change, or a new heartbeat interval
        self._change_seq = 0  # bumped on every change
        self._sent_seq = 0  # the change_seq the last written report covered
        self._sent = asyncio.Event()  # set after each report is written
        self._session_live = False  # a welcomed stream is open
        self._closing = False
        self._closed = asyncio.Event()  # the stream must be half-closed and not reopened
        self._reconnect_now = False  # a join just issued this node's key: reopen with it at once
        self._moves = 0  # addresses tried since the last welcome (several control planes)
        self.refused = ""  # why the control plane refused this agent for good ("" = it did not)

    @property
    def node_id(self) -> str:
        return self._config.node.node_id

    @property
    def connected(self) -> bool:
        """A welcomed stream to the control plane is open."""
        return self._session_live

    def _mark_dirty(self) -> None:
        self._change_seq += 1
        self._dirty = True
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until stop is set, then stop every worker, report, and close the stream."""
        adopted = await self.allocations.adopt_existing()
        if adopted:
            log.info("adopted %d running worker(s): %s", len(adopted), ", ".join(adopted))
        connection = asyncio.create_task(self._connection_loop(), name="agent stream")
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopped, connection}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        log.info("shutting down: stopping %d allocation(s)", len(self.allocations.handles))
        self._closing = True  # assignments from now on are ignored
        # STOPPING reaches the control plane (it stops routing) before any worker refuses calls.
        await self.allocations.shutdown(announce=lambda: self._flush(timeout=1.0))
        await self._flush(timeout=5.0)
        self._closed.set()
        try:
            await asyncio.wait_for(connection, timeout=5.0)
        except TimeoutError:
            log.warning("stream did not close in time")
        log.info("agent stopped")

    async def _flush(self, *, timeout: float) -> None:
        """Wait until a report covering every change so far was written, if a stream is live."""
        deadline = time.monotonic() + timeout
        while self._session_live and self._sent_seq < self._change_seq and time.monotonic() < deadline:
            self._sent.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sent.wait(), max(0.0, deadline - time.monotonic()))

    async def _connection_loop(self) -> None:
        backoff = self._config.backoff
        while not self._closed.is_set():
            try:
                await self._session()
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _REFUSED_CODES:
                    self.refused = f"{exc.code().name}: {exc.details()}"
                    log.error(
                        "the control plane refused this agent for good (%s; the API key came from %s): exiting",
                        self.refused, self._link.source(),
                    )  # fmt: skip
                    return
                log.warning("control plane stream (%s): %s: %s", self._link.current, exc.code().name, exc.details())
                self._move(_leader_hint(exc))
            except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
                log.warning("control plane stream ended: %s", exc)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are being cancelled, not just the RPC
                log.warning("control plane stream was cancelled")
            except Exception:
                log.exception("control plane stream failed")
                self._move("")
            finally:
                self._session_live = False
            if self._closed.is_set() or self.refused:
                return
            delay, self._reconnect_now = (0.0 if self._reconnect_now else backoff.next()), False
            log.info("reconnecting to %s in %.2f s", self._link.current, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), delay)

    def _move(self, leader: str) -> None:
        """After a failed or refused stream: try the leader a standby named, or the next address.
        The first pass over the addresses since the last welcome goes at once; then the backoff rules."""
        if len(self._link.targets) < 2:
            return
        before = self._link.current
        after = self._link.move(leader)
        self._moves += 1
        if after != before and self._moves < 2 * len(self._link.targets):
            self._reconnect_now = True

    async def _session(self) -> None:
        """One stream, from register to its end (an RPC error ends it too)."""
        async with self._link.channel(self._config.channel_options) as channel:
            call = agent_pb2_grpc.AgentControlStub(channel).Connect(metadata=self._link.metadata())
            reports = self._take_reports()
            await call.write(
                agent_pb2.AgentMessage(
                    register=agent_pb2.RegisterNode(
                        node=self._config.node, applied_generation=self.applied_generation, allocations=reports[1]
                    )
                )
            )
            self._reported(reports)
            log.info("registered as %s with %d allocation(s)", self._config.node.node_id, len(reports[1]))
            writer = asyncio.create_task(self._writer(call), name="agent stream writer")
            reader = asyncio.ensure_future(call.read())
            closed = asyncio.ensure_future(self._closed.wait())
            try:
                while True:
                    done, _ = await asyncio.wait({reader, closed, writer}, return_when=asyncio.FIRST_COMPLETED)
                    if writer in done:
                        writer.result()  # a write failed: the stream is broken
                        return
                    if closed in done:
                        writer.cancel()
                        await self._half_close(call, reader)
                        return
                    message = None if reader.cancelled() else reader.result()
                    if message is None or message is grpc.aio.EOF:
                        log.warning("control plane closed the stream")
                        return
                    if message.HasField("welcome") and message.welcome.node_credential:
                        self._save_node_credential(message.welcome.node_credential)
                        return
                    if message.HasField("welcome"):
                        self._session_live = True
                        self._on_welcome(message.welcome)
                    elif message.HasField("assignment"):
                        self._on_assignment(message.assignment)
                    elif message.HasField("credentials"):
                        self._on_credentials(message.credentials)
                    reader = asyncio.ensure_future(call.read())
            finally:
                for task in (reader, closed, writer):
                    task.cancel()
                await asyncio.wait({writer})
                if not writer.cancelled():
                    writer.exception()  # retrieved: it was raised above, or is moot now
                call.cancel()

    async def _half_close(
        self,
        call: grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.ControlMessage],
        reader: asyncio.Future[object],
    ) -> None:
        """Graceful end: no more writes; give the control plane a moment to end its side."""
        with contextlib.suppress(Exception):
            await call.done_writing()
        await asyncio.wait({reader}, timeout=1.0)  # never raises the read's own outcome

    def _on_welcome(self, welcome: agent_pb2.Welcome) -> None:
        self._config.backoff.reset()  # registration succeeded
        self._moves = 0
        interval = welcome.heartbeat_interval.ToTimedelta().total_seconds()
        self._heartbeat_interval = interval if interval > 0 else DEFAULT_HEARTBEAT
        self._wake.set()  # the writer reschedules its next heartbeat
        if welcome.node_id and welcome.node_id != self._config.node.node_id:
            log.warning(
                "control plane welcomed node id %s; this agent is %s", welcome.node_id, self._config.node.node_id
            )
        log.info(
            "welcomed: heartbeat every %.2f s, node timeout %.2f s",
            self._heartbeat_interval,
            welcome.node_timeout.ToTimedelta().total_seconds(),
        )

    def _save_node_credential(self, token: str) -> None:
        """Keep the key a join issued this node (0600) and reconnect with it at once.

        A key that cannot be kept ends the agent (self.refused, one ERROR
        line): the join has already bound the node to that key, so retrying
        with the join token would only be refused.
        """
        path = self._link.credential_file
        problem = "the agent has no place to keep it" if path is None else ""
        if path is not None:
            try:
                write_private(path, (token + "\n").encode())
            except OSError as exc:
                problem = f"cannot write {path}: {exc.strerror or exc}"
        if problem:
            self.refused = f"the key the control plane issued node {self.node_id} at its join could not be kept ({problem})"
            log.error(
                "%s: exiting; fix that, then revoke the node's key (keys list shows it by node id) so that it can rejoin",
                self.refused,
            )  # fmt: skip
            return
        self._reconnect_now = True
        log.info("joined: this node's own API key is in %s (mode 0600) and is used from now on", path)

    def _on_credentials(self, credentials: agent_pb2.InferenceCredentials) -> None:
        """Hand the verifiers of keys that may call workers directly to the workers (a 0600 file)."""
        path = self._config.supervisor.credentials_file
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, credentials.SerializeToString())
        log.info("inference credentials version %d: %d key(s) may call workers directly", credentials.version, len(credentials.keys))

    def _on_assignment(self, assignment: agent_pb2.Assignment) -> None:
        if self._closing:
            log.info("ignoring assignment generation %d: shutting down", assignment.generation)
            return
        if assignment.generation <= self.applied_generation:
            log.info("ignoring assignment generation %d (applied %d)", assignment.generation, self.applied_generation)
            return
        log.info(
            "applying assignment generation %d: %d allocation(s)", assignment.generation, len(assignment.allocations)
        )
        self.allocations.apply(assignment.allocations)
        self.applied_generation = assignment.generation
        self._mark_dirty()  # report the new applied generation even if nothing else changed

    def _take_reports(self) -> tuple[int, list[agent_pb2.AllocationReport]]:
        self._dirty = False
        return self._change_seq, self.allocations.reports()

    def _reported(self, reports: tuple[int, list[agent_pb2.AllocationReport]]) -> None:
        self._sent_seq = max(self._sent_seq, reports[0])
        self.allocations.forget_reported(reports[1])
        self._sent.set()

    async def _writer(self, call: grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.ControlMessage]) -> None:
        """The only writer of the stream: coalesced reports and jittered heartbeats."""
        last_heartbeat, factor = time.monotonic(), jittered(1.0)
        while True:
            next_heartbeat = last_heartbeat + factor * self._heartbeat_interval
            self._wake.clear()
            if not self._dirty:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_heartbeat - time.monotonic()))
            if self._dirty:
                await asyncio.sleep(REPORT_COALESCE)
                reports = self._take_reports()
                await call.write(
                    agent_pb2.AgentMessage(
                        report=agent_pb2.RoutingReport(
                            applied_generation=self.applied_generation, allocations=reports[1]
                        )
                    )
                )
                self._reported(reports)
            if time.monotonic() >= last_heartbeat + factor * self._heartbeat_interval:
                timeout = min(STATS_TIMEOUT, self._heartbeat_interval / 2)
                stats = await self.allocations.stats(timeout=timeout)
                await call.write(
                    agent_pb2.AgentMessage(
                        heartbeat=agent_pb2.Heartbeat(applied_generation=self.applied_generation, stats=stats)
                    )
                )
                last_heartbeat, factor = time.monotonic(), jittered(1.0)


def _leader_hint(exc: grpc.aio.AioRpcError) -> str:
    """The leader's address a standby's UNAVAILABLE names in its trailers ("" if none)."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return ""
    for key, value in exc.trailing_metadata() or ():
        if key == LEADER_METADATA:
            return value if isinstance(value, str) else value.decode()
    return ""
