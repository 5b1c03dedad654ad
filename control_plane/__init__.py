"""modelfleet control plane: durable state, scheduling, agent streams, inference gateway."""
