"""How a worker process ended, in words the control plane can show.

Design
------
The worker's exit status decides what the supervisor does next
(node_agent.supervisor): exit code 3 (load error) and 2 (bad arguments) are
permanent and never retried; exit code 0 only follows a drain after
SIGTERM/SIGINT, so a worker that exits 0 without the agent asking was
stopped on purpose by someone else (not a crash); anything else (a signal, a
non-zero code) is a crash that the restart budget covers. The reason
carries the exit summary and the last lines of the worker's own log (its
stderr), read from where this run of the worker began.

The agent's own exit status: 0 after SIGTERM/SIGINT, ``EXIT_REFUSED`` (78,
sysexits' EX_CONFIG) when the control plane refused its credential for good
(UNAUTHENTICATED or PERMISSION_DENIED: a bad, expired or revoked key, a used-up
join token, a node held by another key), or when the key a join issued
its node cannot be written to DIR/node.key (the node is already bound to
that key); retrying cannot help until an operator acts, so service managers should not restart it
(systemd: RestartPreventExitStatus=78).

Pure functions over a log file; no processes, no asyncio.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_BAD_ARGUMENTS = 2
EXIT_LOAD_ERROR = 3
EXIT_REFUSED = 78  # the agent: refused for good by the control plane
STDERR_TAIL_LINES = 20
MAX_REASON_CHARS = 2000
_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class Exit:
    """How one worker process ended."""

    summary: str = ""
    stderr: str = ""
    permanent: bool = False  # retrying cannot help: FAILED at once
    stopped: bool = False  # ended by a stop: the agent's, or a clean exit after someone's SIGTERM
    uptime: float = 0.0

    @property
    def reason(self) -> str:
        return f"{self.summary}; stderr: {self.stderr}" if self.stderr else self.summary


def stderr_tail(log_file: Path, log_offset: int) -> list[str]:
    """The last non-empty lines the current run of the worker wrote to its log."""
    try:
        with open(log_file, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(log_offset if log_offset <= size else 0, size - _TAIL_BYTES))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return [ln.strip() for ln in text.splitlines() if ln.strip()][-STDERR_TAIL_LINES:]


def describe(code: int | None) -> str:
    """'worker exited with code N' / 'worker killed by signal SIGKILL' / unknown (adopted)."""
    if code is None:
        return "worker exited (adopted process; exit status unknown)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"worker killed by signal {name}"
    return f"worker exited with code {code}"


def exit_outcome(code: int | None, *, log_file: Path, log_offset: int, uptime: float, draining: bool = False) -> Exit:
    """Classify an exit the agent did not ask for.

    Args:
        code: the exit status (negative: killed by that signal; None: unknown).
        log_file, log_offset: the worker's log and where its current run began.
        uptime: seconds it served (the restart budget refills after long service).
        draining: the worker had announced it was draining (health NOT_SERVING).
    """
    lines = stderr_tail(log_file, log_offset)
    stderr = " | ".join(lines)[-MAX_REASON_CHARS:]
    if code == EXIT_LOAD_ERROR:
        line = next((ln for ln in reversed(lines) if ln.startswith("load error")), "")
        return Exit(line or f"load error: {lines[-1] if lines else 'worker exited with code 3'}", permanent=True)
    if code == EXIT_BAD_ARGUMENTS:
        return Exit("worker rejected its arguments (exit code 2)", stderr, permanent=True)
    if code == EXIT_OK or draining:
        # Only a drain after SIGTERM/SIGINT ends a worker with 0: stopped by someone, not crashed.
        return Exit(f"worker stopped outside the agent ({describe(code).removeprefix('worker ')})", stopped=True, uptime=uptime)
    return Exit(describe(code), stderr, uptime=uptime)
