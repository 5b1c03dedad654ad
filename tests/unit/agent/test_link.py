"""The agent's list of control planes (ControlPlaneLink): a standby's hint
moves it to the leader when listed, anything else to the next address."""

from __future__ import annotations

from node_agent.agent import ControlPlaneLink


def test_the_agent_follows_the_named_leader_else_the_next_address() -> None:
    link = ControlPlaneLink("A:1, B:1,C:1")
    assert (link.targets, link.current) == (("A:1", "B:1", "C:1"), "A:1")
    assert link.move("C:1") == "C:1"
    assert link.move("") == "A:1"
    assert link.move("elsewhere:1") == "B:1", "a leader not listed: the next address"
    assert ControlPlaneLink("A:1").move("") == "A:1"
