"""The inference gateway: inference.GRPCInferenceService routed by weight to started workers."""
