"""The model probe: load an uploaded file in a subprocess and read its tensor specs.

An upload is validated by ``python -m node_agent.runtime.probe`` on the
committed blob, never in the control plane's own process: loading a model
imports onnxruntime or torch, may take long, may crash, and a hostile file
must not take the control plane with it. The probe prints one JSON line
(``{"ok": ..., "inputs": ..., "outputs": ..., "error": ..., "refused": ...}``);
`parse_probe` turns it, or the way the process died, into a ProbeResult.

Concurrency: `Prober.probe` is a coroutine on the control plane's loop; at
most ``concurrency`` probes run at once (each imports a heavy runtime). A
probe that outlives its timeout is killed with its whole process group.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelfleet.v1 import common_pb2

__all__ = ["FORMATS", "MAX_REASON_CHARS", "ProbeResult", "Prober", "parse_probe", "trim"]

logger = logging.getLogger(__name__)

# The probe argument for each accepted format.
FORMATS: dict[int, str] = {
    common_pb2.MODEL_FORMAT_ONNX: "onnx",
    common_pb2.MODEL_FORMAT_TORCHSCRIPT: "torchscript",
}
MAX_REASON_CHARS = 2000
_PROBE_MODULE = "node_agent.runtime.probe"
# The directory holding the control_plane and node_agent packages; put first on
# the probe's PYTHONPATH so it runs the node_agent of this very tree.
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What the probe said about one model file."""

    ok: bool
    inputs: tuple[common_pb2.TensorSpec, ...] = ()
    outputs: tuple[common_pb2.TensorSpec, ...] = ()
    error: str = ""
    refused: bool = False  # a file that must not be kept (zip bomb, ONNX external data)


def trim(text: str, *, keep_end: bool = False) -> str:
    """`text` cut to MAX_REASON_CHARS (keeping its end for a traceback's tail)."""
    text = text.strip()
    if len(text) <= MAX_REASON_CHARS:
        return text
    if keep_end:
        return "…" + text[-(MAX_REASON_CHARS - 1) :]
    return text[: MAX_REASON_CHARS - 1] + "…"


class Prober:
    """Runs probe subprocesses, at most `concurrency` at a time."""

    def __init__(self, *, python: str, timeout_s: float, concurrency: int) -> None:
        """
        Args:
            python: the interpreter that runs the probe.
            timeout_s: how long the probe may take to load a model.
            concurrency: how many probes may run at once.
        """
        self._python = python
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max(1, concurrency))

    async def probe(
        self,
        path: Path,
        *,
        model_format: int,
        inputs: Sequence[common_pb2.TensorSpec],
        outputs: Sequence[common_pb2.TensorSpec],
    ) -> ProbeResult:
        """Load the file in a probe subprocess; never raises for a bad model.

        `inputs`/`outputs` are the specs the user declared (checked against
        the model's); `model_format` is a key of FORMATS.
        """
        argv = [self._python, "-m", _PROBE_MODULE, "--format", FORMATS[model_format], str(path)]
        if inputs:
            argv += ["--inputs-json", json.dumps([_spec_json(s) for s in inputs])]
        if outputs:
            argv += ["--outputs-json", json.dumps([_spec_json(s) for s in outputs])]
        async with self._slots:
            result = await self._run(argv)
        if result.error:
            # Loaders name the file: show its name, not the server's data directory.
            result = dataclasses.replace(result, error=result.error.replace(str(path), path.name))
        return result

    async def _run(self, argv: list[str]) -> ProbeResult:
        """Run one probe to its end (or kill it at the timeout)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # so a timeout kills its children too
            )
        except OSError as exc:
            logger.error("cannot start the model probe %s: %s", argv[0], exc)
            return ProbeResult(ok=False, error=f"the model could not be validated: cannot start the probe: {exc}")
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), self._timeout_s)
        except TimeoutError:
            return ProbeResult(
                ok=False,
                error=f"the model did not load within {self._timeout_s:g} s (probe timeout)",
            )
        finally:
            if proc.returncode is None:
                _kill_group(proc.pid)
                await proc.wait()
        return parse_probe(proc.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))


def parse_probe(returncode: int | None, stdout: str, stderr: str) -> ProbeResult:
    """The probe's answer: its last JSON line on stdout; else why it crashed."""
    answer = _last_answer(stdout)
    if answer is not None and answer.get("ok") is True and returncode == 0:
        try:
            inputs = tuple(_spec_from_json(v) for v in answer.get("inputs") or [])
            outputs = tuple(_spec_from_json(v) for v in answer.get("outputs") or [])
        except (TypeError, ValueError) as exc:
            return ProbeResult(ok=False, error=f"the model could not be validated: malformed probe answer: {exc}")
        return ProbeResult(ok=True, inputs=inputs, outputs=outputs)
    if answer is not None and answer.get("ok") is False:
        error = trim(str(answer.get("error") or "the model could not be loaded"))
        return ProbeResult(ok=False, error=error, refused=answer.get("refused") is True)
    if returncode is not None and returncode < 0:
        try:
            how = f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"killed by signal {-returncode}"
    else:
        how = f"exit code {returncode}"
    tail = "\n".join(stderr.strip().splitlines()[-20:])
    error = f"the model could not be validated: the probe failed ({how})"
    if tail:
        error += f": {tail}"
    return ProbeResult(ok=False, error=trim(error, keep_end=True))


def _last_answer(stdout: str) -> dict[str, Any] | None:
    """The last line of stdout that is a JSON object with an "ok" key."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict) and "ok" in parsed:
                return parsed
    return None


def _spec_json(spec: common_pb2.TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _spec_from_json(value: Any) -> common_pb2.TensorSpec:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ValueError(f"not a tensor spec: {value!r}")
    shape = [int(d) if isinstance(d, int) and d >= 0 else -1 for d in value.get("shape") or []]
    return common_pb2.TensorSpec(name=value["name"], datatype=str(value.get("datatype") or ""), shape=shape)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
