"""Measured figures of the reliability scenarios, printed and collected.

A test calls `record("S1", "detection time", 1.08, "s")`: the figure is
printed at once (visible with `pytest -s`), kept for the terminal summary
that tests/conftest.py prints at the end of the run, and appended as one
JSON line to build/reliability-figures.jsonl (or $MODELFLEET_FIGURES), the
file docs/reliability.md's table is read from. The file is truncated once
per pytest session, the first time a figure is recorded.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES: list[dict[str, object]] = []
_started = False


def path() -> Path:
    return Path(os.environ.get("MODELFLEET_FIGURES") or ROOT / "build" / "reliability-figures.jsonl")


def record(scenario: str, name: str, value: float | int | str, unit: str = "", note: str = "") -> None:
    """Print and collect one measured figure of a scenario."""
    global _started
    if isinstance(value, float):
        value = round(value, 3)
    item: dict[str, object] = {"scenario": scenario, "figure": name, "value": value, "unit": unit, "note": note, "at": time.time()}
    FIGURES.append(item)
    print(f"FIGURE {scenario}: {name} = {value}{(' ' + unit) if unit else ''}{('  (' + note + ')') if note else ''}", flush=True)
    out = path()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w" if not _started else "a", encoding="utf-8") as fh:
        fh.write(json.dumps(item) + "\n")
    _started = True


def summary_lines() -> list[str]:
    lines = []
    for item in FIGURES:
        unit = f" {item['unit']}" if item["unit"] else ""
        note = f"  ({item['note']})" if item["note"] else ""
        lines.append(f"{item['scenario']:<5} {item['figure']}: {item['value']}{unit}{note}")
    return lines
