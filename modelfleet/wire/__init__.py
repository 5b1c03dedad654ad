"""Wire rules both processes enforce the same way (no grpc import here).

- `v2`: the KServe V2 request rules: one walk over a ModelInferRequest
  against a model's tensor specs; the gateway checks, the worker checks and
  decodes from the same walk.
- `triton`: Triton's ModelConfig as both serve it.
"""
