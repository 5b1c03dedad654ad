"""The control plane's gRPC transport: the server, its interceptors, the thin servicers and the /metrics exporter."""
