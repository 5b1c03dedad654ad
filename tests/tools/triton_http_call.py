"""Calls a KServe V2 REST server with the real `tritonclient.http` (sync or aio), in its own process.

tritonclient and modelfleet.inference register the same protobuf symbols,
so tests never import tritonclient themselves; they run this script.

    python tests/tools/triton_http_call.py infer --url H:P --model NAME --input x=FILE.npy [--input ...]
        --output y [--output ...] --out-dir DIR [--json] [--aio] [--model-version V] [--token KEY] [--timeout-us N]
        -> prints {"outputs": {"y": "DIR/y.npy"}, "ready": true, "live": true}
           or {"error": {"status": "400", "message": "..."}}

--json sends the inputs as JSON data and asks for JSON outputs; without it
every tensor is binary (Triton's binary tensor data extension). BYTES inputs
are .npy object arrays of bytes (saved with allow_pickle).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
from typing import Any

import numpy as np
import tritonclient.http as http
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype


def _headers(args: argparse.Namespace) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {args.token}"} if args.token else None


def _tensors(args: argparse.Namespace) -> tuple[list[http.InferInput], list[http.InferRequestedOutput]]:
    inputs = []
    for item in args.input:
        name, path = item.split("=", 1)
        array = np.load(path, allow_pickle=True)
        tensor = http.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=not args.json)
        inputs.append(tensor)
    outputs = [http.InferRequestedOutput(name, binary_data=not args.json) for name in args.output]
    return inputs, outputs


def _saved(result: Any, args: argparse.Namespace) -> dict[str, str]:
    saved = {}
    for output in result.get_response()["outputs"]:
        path = pathlib.Path(args.out_dir) / f"{output['name']}.npy"
        np.save(path, result.as_numpy(output["name"]), allow_pickle=True)
        saved[output["name"]] = str(path)
    return saved


def infer_sync(args: argparse.Namespace) -> dict[str, object]:
    client = http.InferenceServerClient(url=args.url)
    inputs, outputs = _tensors(args)
    try:
        live = client.is_server_live(headers=_headers(args))
        ready = client.is_model_ready(args.model, args.model_version, headers=_headers(args))
        result = client.infer(args.model, inputs, outputs=outputs or None, model_version=args.model_version,
                              headers=_headers(args), timeout=args.timeout_us)
    except InferenceServerException as exc:
        return {"error": {"status": exc.status(), "message": exc.message()}}
    finally:
        client.close()
    return {"outputs": _saved(result, args), "ready": ready, "live": live}


async def infer_aio(args: argparse.Namespace) -> dict[str, object]:
    client = http_aio.InferenceServerClient(url=args.url)
    inputs, outputs = _tensors(args)
    try:
        live = await client.is_server_live(headers=_headers(args))
        ready = await client.is_model_ready(args.model, args.model_version, headers=_headers(args))
        result = await client.infer(args.model, inputs, outputs=outputs or None, model_version=args.model_version,
                                    headers=_headers(args), timeout=args.timeout_us)
    except InferenceServerException as exc:
        return {"error": {"status": exc.status(), "message": exc.message()}}
    finally:
        await client.close()
    return {"outputs": _saved(result, args), "ready": ready, "live": live}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("infer")
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--model-version", default="")
    p.add_argument("--input", action="append", default=[])
    p.add_argument("--output", action="append", default=[])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--aio", action="store_true")
    p.add_argument("--token", default="")
    p.add_argument("--timeout-us", type=int, default=None)
    args = parser.parse_args()
    result = asyncio.run(infer_aio(args)) if args.aio else infer_sync(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
