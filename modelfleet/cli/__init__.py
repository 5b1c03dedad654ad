"""The `modelfleet` command line: a thin gRPC client of the control plane.

The CLI talks to the control plane only over its public gRPC API
(`modelfleet.v1.*` and the `inference.GRPCInferenceService` gateway) and
never imports `control_plane` or `node_agent`; `modelfleet up` starts them as
subprocesses. Layout:

- `main`: the argparse tree, global flags and the one place that turns
  errors into a single `error: ...` line and an exit status.
- `client`: the channel, the bearer-token metadata and RPC error formatting.
- `parsing`, `render`, `tensors`: pure helpers (durations, sizes, tensor
  specs; tables and the Elasticsearch allocation shape; V2 tensor coding).
- `cmd_models`, `cmd_deployments`, `cmd_nodes`, `cmd_infer`: subcommands.
- `up`, `supervisor`: the embedded local fleet.
"""
