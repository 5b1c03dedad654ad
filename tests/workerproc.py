"""Start real inference worker processes for tests and wait for them.

    with start_worker(model=path, fmt="onnx", name="add", workdir=tmp_path) as w:
        channel = grpc.insecure_channel(w.address)

`spawn_worker` starts `python -m node_agent.worker` (this tree first on
PYTHONPATH, stderr to a file so a chatty worker never blocks on a full pipe)
and returns at once; `WorkerProcess.wait_ready` polls for the ready file with
a deadline and fails early, with the worker's stderr, if the process exits.
`start_worker` does both. Leaving the `with` block (or `close()`) sends
SIGTERM, waits for the drain, and SIGKILLs a worker that does not exit.
Used by the worker, agent and integration tests alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
_POLL_S = 0.02


class WorkerProcess:
    """A running (or exited) worker process and its files."""

    def __init__(self, proc: subprocess.Popen[bytes], *, ready_file: Path, stderr_file: Path, argv: list[str]) -> None:
        self.proc = proc
        self.ready_file = ready_file
        self.stderr_file = stderr_file
        self.argv = argv
        self.ready: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        if self.ready is None:
            raise RuntimeError("the worker is not ready yet: call wait_ready() first")
        return int(self.ready["port"])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stderr_text(self) -> str:
        """Everything the worker wrote to stderr so far."""
        try:
            return self.stderr_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def last_stderr_line(self) -> str:
        lines = [line for line in self.stderr_text().splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Poll for the ready file; returns its JSON.

        Raises:
            RuntimeError: the process exited first (with its code and stderr).
            TimeoutError: no ready file within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                self.ready = json.loads(self.ready_file.read_text(encoding="utf-8"))
                return self.ready
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"worker exited with code {code} before it was ready:\n{self.stderr_text()}")
            time.sleep(_POLL_S)
        raise TimeoutError(f"worker not ready within {timeout} s:\n{self.stderr_text()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit; returns its exit code."""
        return self.proc.wait(timeout=timeout)

    def terminate(self) -> None:
        """Send SIGTERM (the agent's stop: drain then exit 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def close(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit code."""
        self.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def worker_argv(
    *,
    model: Path | str,
    fmt: str,
    name: str,
    ready_file: Path | str,
    version: str = "1",
    inference_threads: int = 1,
    model_threads: int = 1,
    queue_capacity: int = 16,
    drain_timeout: float = 5.0,
    port: int = 0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The worker's command line, as the agent would build it."""
    return [
        sys.executable,
        "-m",
        "node_agent.worker",
        "--model", str(model),
        "--format", fmt,
        "--name", name,
        "--version", version,
        "--inference-threads", str(inference_threads),
        "--model-threads", str(model_threads),
        "--queue-capacity", str(queue_capacity),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ready-file", str(ready_file),
        "--drain-timeout", str(drain_timeout),
        *extra_args,
    ]  # fmt: skip


def spawn_worker(
    *,
    model: Path | str,
    fmt: str,
    name: str,
    workdir: Path,
    argv: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    **options: Any,
) -> WorkerProcess:
    """Start a worker without waiting for it.

    Args:
        model, fmt, name: what to serve.
        workdir: where the ready file (`<name>.ready.json`) and stderr go.
        argv: a full command line to run instead of `worker_argv(...)` (its
            --ready-file must still be `workdir/<name>.ready.json`).
        env: extra environment variables.
        **options: more `worker_argv` keywords (queue_capacity, ...).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ready_file = workdir / f"{name}.ready.json"
    stderr_file = workdir / f"{name}.stderr"
    ready_file.unlink(missing_ok=True)
    command = list(argv) if argv is not None else worker_argv(
        model=model, fmt=fmt, name=name, ready_file=ready_file, **options
    )
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p)
    child_env.update(env or {})
    with open(stderr_file, "wb") as stderr:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
    return WorkerProcess(proc, ready_file=ready_file, stderr_file=stderr_file, argv=command)


def start_worker(*, timeout: float = 60.0, **kwargs: Any) -> WorkerProcess:
    """`spawn_worker(**kwargs)` then `wait_ready(timeout)`; kills it on failure."""
    worker = spawn_worker(**kwargs)
    try:
        worker.wait_ready(timeout)
    except BaseException:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()
        raise
    return worker
