"""Reliability scenarios of the agent protocol's transport, with real
processes on 127.0.0.1 (port 0):

21. keepalive: an idle agent stream survives HTTP/2 keepalive with 0
    GOAWAYs. Scaled 10x down: the agent pings every 1 s (10 s), the control
    plane tolerates client pings
    down to 0.5 s apart (5 s), 2 strikes; heartbeats every 5 s leave the
    stream idle in between (the agent's pings are counted from gRPC's
    http_keepalive trace). Negative control: against a control plane that
    tolerates pings only 5 s apart the same agent draws a GOAWAY
    ("too_many_pings"), so the count above would see one.
22. reconnect storm: 50 agents (the real Agent class and its Backoff, in one
    process: tests/tools/agent_swarm.py) reconnect after a control-plane
    kill -9 with jittered backoff; no 100 ms window holds more than ~20 % of
    the reconnects.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from cluster import ROOT, Cluster, Proc, wait_until
from faults import restart_control_plane
from figures import record

KEEPALIVE_TRACE = {"GRPC_TRACE": "http_keepalive", "GRPC_VERBOSITY": "debug"}


def count(log: str, text: str) -> int:
    return log.count(text)


def test_s21_idle_agent_stream_survives_keepalive_with_zero_goaways(tmp_path: Path) -> None:
    # The control plane's own pings (every 30 s here) would reset the agent's keepalive timer and spare
    # it from pinging; the agent's pings are the ones its ping policy judges, so they must flow.
    c = Cluster(tmp_path, heartbeat=5.0, node_timeout=30.0,
                cp_args=["--keepalive-time", "30", "--keepalive-timeout", "1", "--keepalive-min-ping-interval", "0.5"])  # fmt: skip
    try:
        c.start_control_plane()
        agent = c.start_agent("node-a", extra_args=["--keepalive-time", "1", "--keepalive-timeout", "1"], env=KEEPALIVE_TRACE)
        c.wait_nodes(1)
        began = time.monotonic()
        pings_before = count(agent.log(), "Finish keepalive ping")
        window = 6.0
        while time.monotonic() - began < window:  # an idle observation window (pacing, not a wait for a state)
            assert agent.alive()
            time.sleep(0.25)
        log = agent.log()
        pings = count(log, "Finish keepalive ping") - pings_before
        goaways = count(log, "GOAWAY")
        sessions = count(log, "registered as ")
        assert pings >= 3, pings  # the stream was exercised by keepalive, not by traffic
        assert goaways == 0 and sessions == 1, (goaways, sessions)
        assert c.cp is not None and count(c.cp.log(), "disconnected") == 0

        # negative control: the real server policy (pings >= 5 s apart) against a 1 s pinger
        c.cp_args = ["--keepalive-min-ping-interval", "5"]
        restart_control_plane(c)
        wait_until(lambda: count(agent.log(), "too_many_pings") >= 1, timeout=30, what="a GOAWAY too_many_pings")
        control = count(agent.log(), "too_many_pings")
    finally:
        c.close()
    record("S21", "idle stream: keepalive pings / GOAWAYs / reconnects", f"{pings} / {goaways} / {sessions - 1}",
           note=f"{window:g} s idle, scaled 10x (agent 1 s, server min 0.5 s, 2 strikes)")  # fmt: skip
    record("S21", "negative control: GOAWAY too_many_pings seen when the agent pings too often", control)


def fraction_in_window(times: list[float], window: float = 0.1) -> float:
    """The largest share of `times` inside any window of `window` seconds."""
    times = sorted(times)
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] > window:
            j += 1
        best = max(best, i - j + 1)
    return best / len(times)


def welcome_times(swarm: Proc, after: float) -> tuple[list[float], int]:
    """First welcome per agent after `after` (UNIX time), and the number of attempts since."""
    events = [json.loads(line) for line in swarm.log().splitlines() if line.startswith('{"event"')]
    welcomes: dict[str, float] = {}
    for e in events:
        if e["event"] == "welcome" and e["t"] > after:
            welcomes.setdefault(e["node"], e["t"])
    return sorted(welcomes.values()), sum(1 for e in events if e["event"] == "attempt" and e["t"] > after)


def test_s22_reconnect_storm_of_50_agents_is_spread_by_jittered_backoff(tmp_path: Path) -> None:
    """Two restarts: a quick one (back before the agents' first retry at 1 s +-20 %) and one
    that takes 3 s, as a control plane restarting on a busy host does."""
    agents = 50
    c = Cluster(tmp_path, heartbeat=1.0, node_timeout=5.0)
    swarm: Proc | None = None
    results = []
    try:
        c.start_control_plane()
        # the admin key may act for any node: one key for the 50 agents
        swarm = Proc("swarm", [sys.executable, str(ROOT / "tests" / "tools" / "agent_swarm.py"), "--control-plane",
                               c.addr, "--root", str(tmp_path / "swarm"), "--count", str(agents)],
                     log_path=tmp_path / "swarm.log", env={"MODELFLEET_TOKEN": c.token})  # fmt: skip
        c.wait_nodes(agents, timeout=60)
        for downtime in (0.0, 3.0):
            assert c.cp is not None
            killed = time.time()
            c.cp.kill()
            time.sleep(downtime)  # the restart's duration: part of the scenario, not a wait for a state
            c.start_control_plane(listen=c.addr)
            back = time.time() - killed
            wait_until(lambda: len(welcome_times(swarm, killed)[0]) == agents, timeout=60, what="all agents welcomed")
            c.wait_nodes(agents, timeout=60)
            times, attempts = welcome_times(swarm, killed)
            results.append((back, fraction_in_window(times), times[-1] - times[0], times[-1] - killed, attempts))
    finally:
        if swarm is not None:
            swarm.stop()
        c.close()
    (quick_back, quick_share, quick_spread, _quick_last, _), (_slow_back, share, spread, last, attempts) = results
    assert share <= 0.3, share  # ~20 %, with room for a shared machine
    assert last <= 15.0
    record("S22", "control plane down 3 s: busiest 100 ms window of 50 reconnects", f"{share:.0%}",
           note=f"promise ~20 %; spread {spread:.2f} s, last {last:.2f} s after the kill, {attempts} attempts")  # fmt: skip
    record("S22", f"control plane back in {quick_back:.1f} s (before the first retry): busiest 100 ms window", f"{quick_share:.0%}",
           note=f"all retry once, 1 s +-20 % spreads them over {quick_spread:.2f} s only")  # fmt: skip
    record("S22", "agents", f"{agents} (real Agent class and Backoff, one process: tests/tools/agent_swarm.py)")
