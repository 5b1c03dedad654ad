"""Where the agent keeps the key a join issued its node, and what it does when it cannot."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from modelfleet.v1 import agent_pb2
from node_agent.agent import Agent, AgentConfig
from node_agent.worker_lifecycle import SupervisorConfig


def agent_keeping_at(tmp_path: Path, credential_file: Path) -> Agent:
    return Agent(
        AgentConfig(
            control_plane="127.0.0.1:1",
            data_dir=tmp_path,
            node=agent_pb2.NodeInfo(node_id="node-7"),
            supervisor=SupervisorConfig(data_dir=tmp_path),
            credential_file=credential_file,
        )
    )


def test_the_issued_key_is_written_0600_and_sent_from_then_on(tmp_path: Path) -> None:
    agent = agent_keeping_at(tmp_path, tmp_path / "node.key")
    agent._save_node_credential("mfk_abc_secret")
    assert (tmp_path / "node.key").read_text() == "mfk_abc_secret\n"
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600
    assert agent.refused == ""
    assert agent._link.metadata() == (("authorization", "Bearer mfk_abc_secret"),)


def test_a_key_that_cannot_be_kept_ends_the_agent_with_one_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "gone" / "node.key"  # its directory does not exist: the write fails
    agent = agent_keeping_at(tmp_path, path)
    with caplog.at_level(logging.INFO, logger="node_agent.agent"):
        agent._save_node_credential("mfk_abc_secret")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0] and "node-7" in errors[0] and "revoke" in errors[0]
    assert "could not be kept" in agent.refused
