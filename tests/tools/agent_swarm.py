"""Many node agents in one process, for the reconnect-storm scenario (22).

    python tests/tools/agent_swarm.py --control-plane HOST:PORT --root DIR --count 50

Each agent is the real `node_agent.agent.Agent` (its stream client, its
reconnect loop and its `Backoff`), only without a process of its own: 50
Python processes would not fit a 2-core machine. They run no workers. Every
connection attempt and every welcome is printed as one JSON line
{"event": "attempt" | "welcome", "node": ID, "t": UNIX_TIME} on stdout, so
the test can measure how the reconnects spread. They present the API key in
$MODELFLEET_TOKEN (the test passes its admin key, which may act for any
node). SIGTERM stops them all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from modelfleet.v1 import agent_pb2, common_pb2
from node_agent.agent import Agent, AgentConfig
from node_agent.supervisor import SupervisorConfig


def emit(event: str, node: str) -> None:
    sys.stdout.write(json.dumps({"event": event, "node": node, "t": time.time()}) + "\n")
    sys.stdout.flush()


class RecordingAgent(Agent):
    """The agent, announcing each connection attempt and each welcome."""

    async def _session(self) -> None:
        emit("attempt", self._config.node.node_id)
        await super()._session()

    def _on_welcome(self, welcome: agent_pb2.Welcome) -> None:
        emit("welcome", self._config.node.node_id)
        super()._on_welcome(welcome)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--control-plane", required=True)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--count", type=int, default=50)
    args = p.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    agents = []
    for i in range(args.count):
        node_id = f"swarm-{i:03d}"
        data_dir = args.root / node_id
        data_dir.mkdir(parents=True, exist_ok=True)
        node = agent_pb2.NodeInfo(
            node_id=node_id, hostname="swarm", capacity=common_pb2.NodeCapacity(cpus=1, memory_bytes=1 << 30)
        )
        config = AgentConfig(control_plane=args.control_plane, data_dir=data_dir, node=node,
                             supervisor=SupervisorConfig(data_dir=data_dir),
                             token=os.environ.get("MODELFLEET_TOKEN", ""))  # fmt: skip
        agents.append(RecordingAgent(config))
    await asyncio.gather(*(agent.run(stop) for agent in agents))


if __name__ == "__main__":
    asyncio.run(main())
