"""The fleet as observed right now: agent sessions, node liveness, and the cached scheduler views of the nodes."""
