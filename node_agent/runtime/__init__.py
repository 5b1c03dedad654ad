"""Model runtimes: load one ONNX or TorchScript file and run it (no grpc here).

`load_runtime` returns a `Runtime` with `inputs`/`outputs` (`TensorSpec`s)
and a thread-safe `run`. `python -m node_agent.runtime.probe` loads a file in
a throwaway process and prints its specs as one JSON line, which is how the
control plane validates uploads without importing this package.
"""

from node_agent.runtime.base import (
    FORMATS,
    ExecutionError,
    InputError,
    LoadError,
    Runtime,
    TensorSpec,
    load_runtime,
    parse_specs_json,
)

__all__ = [
    "FORMATS",
    "ExecutionError",
    "InputError",
    "LoadError",
    "Runtime",
    "TensorSpec",
    "load_runtime",
    "parse_specs_json",
]
