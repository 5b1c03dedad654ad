"""The control plane with a wall clock a test can move forward.

    python tests/tools/clock_control_plane.py OFFSET_FILE [control plane flags...]

runs `control_plane.main.main(flags, wall_clock=...)` where the clock is
time.time() plus the seconds written in OFFSET_FILE (0 while the file is absent
or unreadable; re-read when it changes). Auto stop, deployment start times and
event times all read that clock, so a test can pass an auto stop without
waiting hours. Only the tests start it; the production binary has no such hook.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from control_plane import main as control_plane_main


def offset_clock(path: Path) -> Callable[[], float]:
    """time.time() plus the seconds written in path (0 while it is absent or unreadable)."""
    mtime: int | None = None
    offset = 0.0

    def now() -> float:
        nonlocal mtime, offset
        try:
            seen = path.stat().st_mtime_ns
            if seen != mtime:
                offset = float(path.read_text().strip() or 0)
                mtime = seen
        except (OSError, ValueError):
            mtime, offset = None, 0.0
        return time.time() + offset

    return now


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    control_plane_main.main(sys.argv[2:], wall_clock=offset_clock(Path(sys.argv[1])))
