"""Calls a V2 server with the real `tritonclient.grpc`, in its own process.

tritonclient and modelfleet.inference register the same protobuf symbols,
so tests never import tritonclient themselves; they run this script.

    python tests/tools/triton_call.py infer --url H:P --model NAME --input x=FILE.npy [--output y] --out-dir DIR
        -> prints {"outputs": {"y": "DIR/y.npy"}} or {"error": {"status": "...", "message": "..."}}
    python tests/tools/triton_call.py stream --url H:P --model NAME --input x=FILE.npy --count N [--bad x=FILE.npy] --out-dir DIR
        -> start_stream / async_stream_infer (ids "0".."N-1", then "bad" after the first half) / stop_stream:
           prints {"results": {"0": {"y": "DIR/0-y.npy"}, ...}, "errors": ["message", ...]}
    python tests/tools/triton_call.py metadata --url H:P --model NAME
        (both take --token KEY, sent as `authorization: Bearer KEY`, and --ca PEM for TLS)
    python tests/tools/triton_call.py descriptor --out FILE [--file model_config]
        -> writes tritonclient's serialized FileDescriptorProto of grpc_service.proto (or model_config.proto)
    python tests/tools/triton_call.py config --url H:P --model NAME [--model-version V] [--token KEY]
        -> get_model_config and get_inference_statistics: prints {"config": {...}, "statistics": {...}}
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import tritonclient.grpc as tc
from google.protobuf import descriptor_pb2, json_format
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype


def _client(args: argparse.Namespace) -> tc.InferenceServerClient:
    if args.ca:
        return tc.InferenceServerClient(url=args.url, ssl=True, root_certificates=args.ca)
    return tc.InferenceServerClient(url=args.url)


def _headers(args: argparse.Namespace) -> dict[str, str] | None:
    return {"authorization": f"Bearer {args.token}"} if args.token else None


def infer(args: argparse.Namespace) -> dict[str, object]:
    client = _client(args)
    inputs = _tensors(args.input)
    outputs = [tc.InferRequestedOutput(name) for name in args.output] or None
    try:
        result = client.infer(
            args.model, inputs, outputs=outputs, model_version=args.model_version, client_timeout=args.timeout,
            headers=_headers(args),
        )
    except InferenceServerException as exc:
        return {"error": {"status": exc.status(), "message": exc.message()}}
    out_dir = pathlib.Path(args.out_dir)
    saved = {}
    for output in result.get_response().outputs:
        path = out_dir / f"{output.name}.npy"
        np.save(path, result.as_numpy(output.name))
        saved[output.name] = str(path)
    return {"outputs": saved}


def _tensors(items: list[str]) -> list[tc.InferInput]:
    inputs = []
    for item in items:
        name, path = item.split("=", 1)
        array = np.load(path)
        tensor = tc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def stream(args: argparse.Namespace) -> dict[str, object]:
    import threading

    client = _client(args)
    out_dir = pathlib.Path(args.out_dir)
    results: dict[str, dict[str, str]] = {}
    errors: list[str] = []
    expected = args.count + (1 if args.bad else 0)
    done = threading.Event()
    lock = threading.Lock()

    def callback(result: object, error: object) -> None:
        with lock:
            if error is not None:
                errors.append(str(error.message()))  # type: ignore[attr-defined]
            else:
                response = result.get_response()  # type: ignore[attr-defined]
                saved = {}
                for output in response.outputs:
                    path = out_dir / f"{response.id}-{output.name}.npy"
                    np.save(path, result.as_numpy(output.name))  # type: ignore[attr-defined]
                    saved[output.name] = str(path)
                results[response.id] = saved
            if len(results) + len(errors) >= expected:
                done.set()

    client.start_stream(callback=callback, headers=_headers(args))
    inputs = _tensors(args.input)
    for i in range(args.count):
        client.async_stream_infer(args.model, inputs, request_id=str(i))
        if args.bad and i == args.count // 2:
            client.async_stream_infer(args.model, _tensors(args.bad), request_id="bad")
    done.wait(args.timeout)
    client.stop_stream()
    return {"results": results, "errors": errors}


def metadata(args: argparse.Namespace) -> dict[str, object]:
    client = _client(args)
    try:
        meta = client.get_model_metadata(args.model, headers=_headers(args))
        ready = client.is_model_ready(args.model, headers=_headers(args))
        live = client.is_server_live(headers=_headers(args))
    except InferenceServerException as exc:
        return {"error": {"status": exc.status(), "message": exc.message()}}
    return {"metadata": json_format.MessageToDict(meta, preserving_proto_field_name=True), "ready": ready, "live": live}


def config(args: argparse.Namespace) -> dict[str, object]:
    client = _client(args)
    try:
        cfg = client.get_model_config(args.model, args.model_version, headers=_headers(args), as_json=True)
        stats = client.get_inference_statistics(args.model, args.model_version, headers=_headers(args), as_json=True)
    except InferenceServerException as exc:
        return {"error": {"status": exc.status(), "message": exc.message()}}
    return {"config": cfg["config"], "statistics": stats}


def descriptor(args: argparse.Namespace) -> dict[str, object]:
    proto = descriptor_pb2.FileDescriptorProto()
    (model_config_pb2 if args.file == "model_config" else service_pb2).DESCRIPTOR.CopyToProto(proto)
    pathlib.Path(args.out).write_bytes(proto.SerializeToString())
    return {"file": proto.name, "package": proto.package}


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
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--token", default="")
    p.add_argument("--ca", default="")
    p.set_defaults(fn=infer)
    p = sub.add_parser("stream")
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--input", action="append", default=[])
    p.add_argument("--bad", action="append", default=[])
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--token", default="")
    p.add_argument("--ca", default="")
    p.set_defaults(fn=stream)
    p = sub.add_parser("metadata")
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--ca", default="")
    p.set_defaults(fn=metadata)
    p = sub.add_parser("config")
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--model-version", default="")
    p.add_argument("--token", default="")
    p.add_argument("--ca", default="")
    p.set_defaults(fn=config)
    p = sub.add_parser("descriptor")
    p.add_argument("--out", required=True)
    p.add_argument("--file", default="grpc_service", choices=["grpc_service", "model_config"])
    p.set_defaults(fn=descriptor)
    args = parser.parse_args()
    print(json.dumps(args.fn(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
