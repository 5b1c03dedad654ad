"""Runs the inference worker: `python -m node_agent.worker --help`."""

import sys

from node_agent.worker.main import main

sys.exit(main())
