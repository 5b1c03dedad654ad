"""`python -m modelfleet.cli` runs the `modelfleet` command."""

from __future__ import annotations

import sys

from modelfleet.cli.main import main

sys.exit(main())
