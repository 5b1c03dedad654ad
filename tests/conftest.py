"""Shared pytest setup.

tritonclient and modelfleet.inference register the same protobuf symbols, so
the pytest process must never import tritonclient: tests that use it run
tests/tools/triton_call.py in a subprocess. This guard fails loudly if a test
module breaks that rule.
"""

from __future__ import annotations

import sys

import pytest

# tests/pg.py's session-scoped `postgres_server`, registered once here so that
# every test module shares one server (a fixture imported into each module
# would be a separate definition per module, one server each); tests/netns.py's
# `netns_hosts` (test hosts in network namespaces) likewise.
pytest_plugins = ["pg", "netns"]


@pytest.fixture(autouse=True)
def _no_tritonclient_in_process() -> None:
    yield
    assert "tritonclient" not in sys.modules, (
        "tritonclient was imported in the pytest process; use tests/tools/triton_call.py in a subprocess"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the reliability figures measured in this run (tests/figures.py)."""
    figures = sys.modules.get("figures")
    lines = figures.summary_lines() if figures is not None else []
    if lines:
        terminalreporter.section("measured reliability figures (machine: see docs/reliability.md)")
        for line in lines:
            terminalreporter.write_line(line)
