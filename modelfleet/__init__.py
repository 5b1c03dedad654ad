"""modelfleet: the library both processes share, plus the command line.

The control plane (`control_plane`) and the node agent with its inference
workers (`node_agent`) never import each other; what they must agree on
lives here, once:

- generated protocol code: `v1` (the management and agent APIs),
  `inference` (KServe V2 / Triton's GRPCInferenceService), `store.v1` (the
  control plane's stored records);
- wire rules: `wire.v2` (the V2 request rules the gateway checks and the
  worker checks and decodes), `errors` (how a domain error names its status
  code), `net` (`is_loopback`);
- RPC plumbing: `rpc` (wrapping a method handler while keeping its kind,
  the tolerant request deserializer, the one error-to-status interceptor),
  `streams` (answering a request stream concurrently);
- the CLI: `cli` (a client of the control plane's public API only) and
  `demo` (the model `modelfleet up` deploys).

Which modules may import grpc: `rpc`, `cli` and the generated `*_pb2_grpc`
modules. `wire`, `errors`, `net`, `streams` and `demo` do not, so the
rules they hold can be used where no transport is (the worker's runtimes
import no grpc either). Nothing in modelfleet outside `cli` imports
`control_plane` or `node_agent`; `cli` does not either.
"""
