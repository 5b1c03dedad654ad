"""Child processes of `modelfleet up`: start, watch, tail their logs, stop.

Each child runs in its own process group, so the terminal's Ctrl-C reaches
only `up`, which then stops the children in order (agents first, then the
control plane) with SIGTERM, a grace period, then SIGKILL. On Linux each
child also gets PR_SET_PDEATHSIG=SIGTERM, so a killed `up` does not leave
an orphaned fleet behind. Output goes to one append-only log per child;
`tail()` reads only what this run wrote, to explain an early death.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - best effort; never stop the exec
        pass


class ChildDied(Exception):
    """A child exited while the fleet was meant to run."""

    def __init__(self, child: Child) -> None:
        self.child = child
        super().__init__(f"{child.name} exited with {child.exit_text()}")


class Child:
    """One supervised subprocess with its log file.

    Args:
        name: shown in messages ("control-plane", "node-1").
        argv: the command line.
        log_path: appended to; stdout and stderr both go there.
        env: extra environment variables.
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== modelfleet up: {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def poll(self) -> int | None:
        """The exit status, or None while it runs (or was never started)."""
        return None if self.proc is None else self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_text(self) -> str:
        code = self.poll()
        if code is None:
            return "no exit yet"
        if code < 0:
            try:
                return f"signal {signal.Signals(-code).name}"
            except ValueError:
                return f"signal {-code}"
        return f"exit code {code}"

    def tail(self, lines: int = 20) -> list[str]:
        """The last `lines` lines this run wrote to the log."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except OSError:
            return []
        return data.decode(errors="replace").splitlines()[-lines:]

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass


def check_alive(children: Sequence[Child]) -> None:
    """Raise ChildDied for the first started child that has exited."""
    for child in children:
        if child.proc is not None and child.poll() is not None:
            raise ChildDied(child)


def stop_group(children: Sequence[Child], timeout: float, *, say: Callable[[str], None] | None = None) -> None:
    """SIGTERM every running child, wait up to `timeout`, then SIGKILL the rest.

    A KeyboardInterrupt while waiting (a second Ctrl-C) skips to SIGKILL.
    """
    running = [c for c in children if c.running]
    for child in running:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    try:
        while any(c.running for c in running) and time.monotonic() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    for child in running:
        if child.running:
            if say:
                say(f"{child.name} did not stop within {timeout:g}s; killing it")
            child.signal(signal.SIGKILL)
    for child in running:
        if child.proc is not None:
            try:
                child.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def wait_for_file(path: Path, *, timeout: float, watch: Sequence[Child],
                  parse: Callable[[str], str]) -> str:
    """Wait until `path` holds content `parse` accepts; raise ChildDied/TimeoutError.

    `parse` raises ValueError on partial or bad content (retried until the deadline).
    """
    deadline = time.monotonic() + timeout
    last_error = "it does not exist"
    while True:
        check_alive(watch)
        try:
            return parse(path.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            last_error = str(exc)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{path} was not written within {timeout:g}s ({last_error})")
        time.sleep(0.05)
