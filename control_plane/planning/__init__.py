"""Pure planning, no I/O: placement (scheduler), rolling updates (rollout) and the lifecycles (states and their transitions)."""
