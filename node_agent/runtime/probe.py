"""Validate one model file in a throwaway process and print its tensor specs.

    python -m node_agent.runtime.probe --format onnx|torchscript PATH \
        [--inputs-json JSON] [--outputs-json JSON]

prints exactly one JSON line on stdout:
`{"ok": true, "format": F, "inputs": [...], "outputs": [...]}` and exits 0,
or `{"ok": false, "error": "<loader message>"}` and exits 1 (unloadable file
or malformed spec JSON); `"refused": true` is added for a file that must not
be kept at all (a zip bomb, ONNX external data: see filecheck). Bad command-line syntax exits 2 (argparse).

Before any loader runs, node_agent.runtime.filecheck refuses files that must
not be loaded (zip bombs, ONNX external data). Loaders may write to stdout
themselves, so while the model loads fd 1 points at stderr and the answer is
written to the saved stdout afterwards. Single threaded; the model is loaded
with one inference thread and never run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from node_agent.runtime.base import FORMATS, LoadError, load_runtime, one_line, parse_specs_json
from node_agent.runtime.filecheck import check_model_file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m node_agent.runtime.probe", description=__doc__.split("\n")[0])
    parser.add_argument("--format", required=True, choices=FORMATS, help="the model file's format")
    parser.add_argument("path", help="the model file")
    parser.add_argument("--inputs-json", default=None, help="declared input specs, a JSON list")
    parser.add_argument("--outputs-json", default=None, help="declared output specs, a JSON list")
    return parser


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Load the model the arguments name; the answer object to print."""
    torchscript = args.format == "torchscript"
    try:
        declared_in = parse_specs_json(args.inputs_json, empty_shape_is_any=torchscript) if args.inputs_json else None
        declared_out = parse_specs_json(args.outputs_json, empty_shape_is_any=torchscript) if args.outputs_json else None
    except ValueError as exc:
        return {"ok": False, "error": one_line(f"bad declared specs: {exc}")}
    try:
        check_model_file(args.path, args.format)
    except LoadError as exc:
        return {"ok": False, "refused": True, "error": str(exc)}
    try:
        runtime = load_runtime(
            args.path,
            args.format,
            inference_threads=1,
            declared_inputs=declared_in,
            declared_outputs=declared_out,
        )
    except LoadError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # a loader bug still answers in the protocol
        return {"ok": False, "error": one_line(f"{type(exc).__name__}: {exc}")}
    return {
        "ok": True,
        "format": args.format,
        "inputs": [s.to_json() for s in runtime.inputs],
        "outputs": [s.to_json() for s in runtime.outputs],
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    sys.stdout.flush()
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # anything the loaders print goes to stderr
    try:
        answer = probe(args)
    finally:
        sys.stdout.flush()
        os.dup2(answer_fd, 1)
        os.close(answer_fd)
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0 if answer["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
