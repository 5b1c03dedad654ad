"""The static checks CI holds the tree to: import-linter contracts, mypy and
ruff, each configured in pyproject.toml. They run the executables installed in
the same environment as this interpreter (the `test` extra pins their
versions), from the repository root, and fail with the tool's own report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str) -> None:
    exe = BIN / tool
    if not exe.exists():
        pytest.fail(f"{exe} is missing: install the `test` extra (pip install -e '.[test]')")
    # The checkers read the tree from the repository root; PYTHONPATH keeps
    # import-linter on this checkout when the package is installed from another.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([str(exe), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{tool} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def test_import_contracts() -> None:
    _run("lint-imports", "--no-cache")


def test_mypy() -> None:
    # the files to check come from [tool.mypy] files; no cache so a stale one cannot hide errors
    _run("mypy", "--cache-dir", os.devnull)


def test_ruff() -> None:
    _run("ruff", "check", "--no-cache", ".")
