"""`modelfleet infer DEPLOYMENT --input NAME=...`: one V2 ModelInfer call.

Input values come from a .npy file (`x=@batch.npy`) or a JSON literal
(`x=[[1,2,3,4]]`). Datatypes come from `--dtype`, else from the deployment's
ModelMetadata (asked first, only when some input has no `--dtype`), so a
JSON literal becomes exactly the tensor the model declares. The call goes
to the inference gateway on the control plane's address, `model_name` being
the deployment id. `--json` writes NaN and ±inf as the strings "NaN",
"Infinity" and "-Infinity", as protobuf's JSON mapping does, so the output
always parses.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from google.protobuf import json_format

from modelfleet.cli import tensors
from modelfleet.cli.client import Client
from modelfleet.cli.errors import CliError
from modelfleet.cli.parsing import arg_type, parse_duration
from modelfleet.inference import grpc_service_pb2

DEFAULT_TIMEOUT = 60.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("infer", help="run one inference through the gateway", parents=parents,
                       epilog="with --json, NaN and infinite values are written as the strings \"NaN\", \"Infinity\" "
                              "and \"-Infinity\" (protobuf's JSON mapping), so the output is valid JSON; an input "
                              "value outside its datatype's range is refused, naming the input and the range")
    p.add_argument("deployment_id", metavar="DEPLOYMENT")
    p.add_argument("--input", dest="inputs", action="append", required=True, metavar="NAME=VALUE",
                   help="NAME=@file.npy or NAME=<JSON>, e.g. 'x=[[1,2,3,4]]' (repeatable)")
    p.add_argument("--dtype", dest="dtypes", action="append", default=[], metavar="[NAME=]DTYPE",
                   help="V2 datatype (FP32, INT64, ...) of every input, or of NAME; default from ModelMetadata")
    p.add_argument("--output", dest="outputs", action="append", default=[], metavar="NAME",
                   help="only these outputs (repeatable; default all)")
    p.add_argument("--model-version", default="", metavar="V", help="variant name or model version number to call (default: by weight)")
    p.add_argument("--timeout", type=arg_type(parse_duration, "duration"), default=DEFAULT_TIMEOUT,
                   metavar="DURATION", help="deadline of the call (default 60s)")
    p.set_defaults(func=infer_command)


def parse_dtypes(items: list[str]) -> tuple[str | None, dict[str, str]]:
    """(`--dtype X` for every input, {name: dtype} of `--dtype name=X`), validated."""
    everyone: str | None = None
    per_name: dict[str, str] = {}
    for item in items:
        name, sep, dtype = item.rpartition("=")
        tensors.numpy_dtype(dtype)  # raises ValueError naming the bad datatype
        if sep:
            per_name[name] = dtype.upper()
        else:
            everyone = dtype.upper()
    return everyone, per_name


def model_metadata(client: Client, name: str, version: str = "",
                   timeout: float = DEFAULT_TIMEOUT) -> grpc_service_pb2.ModelMetadataResponse:
    meta: grpc_service_pb2.ModelMetadataResponse = client.inference.ModelMetadata(
        grpc_service_pb2.ModelMetadataRequest(name=name, version=version), timeout=timeout)
    return meta


def build_request(name: str, arrays: dict[str, np.ndarray[Any, Any]], *, outputs: list[str] | None = None,
                  version: str = "") -> grpc_service_pb2.ModelInferRequest:
    """A ModelInferRequest carrying `arrays` as raw_input_contents."""
    req = grpc_service_pb2.ModelInferRequest(model_name=name, model_version=version)
    for input_name, arr in arrays.items():
        datatype, raw = tensors.encode(arr)
        req.inputs.add(name=input_name, datatype=datatype, shape=list(arr.shape))
        req.raw_input_contents.append(raw)
    for output in outputs or []:
        req.outputs.add(name=output)
    return req


def infer(client: Client, name: str, arrays: dict[str, np.ndarray[Any, Any]], *, outputs: list[str] | None = None,
          version: str = "", timeout: float = DEFAULT_TIMEOUT,
          ) -> tuple[grpc_service_pb2.ModelInferResponse, dict[str, np.ndarray[Any, Any]]]:
    """Call ModelInfer; returns the response and its decoded outputs by name."""
    resp: grpc_service_pb2.ModelInferResponse = client.inference.ModelInfer(
        build_request(name, arrays, outputs=outputs, version=version), timeout=timeout)
    try:
        decoded = {out.name: tensors.decode_output(resp, i) for i, out in enumerate(resp.outputs)}
    except ValueError as exc:
        raise CliError(f"cannot decode the response: {exc}") from None
    return resp, decoded


def resolve_inputs(client: Client, args: argparse.Namespace) -> dict[str, np.ndarray[Any, Any]]:
    """Parse every --input and give it its datatype (flags first, then ModelMetadata)."""
    try:
        raw = [tensors.parse_input_arg(item) for item in args.inputs]
        everyone, per_name = parse_dtypes(args.dtypes)
    except ValueError as exc:
        raise CliError(str(exc), code=2) from None
    declared: dict[str, str] | None = None
    if any(everyone is None and name not in per_name for name, _ in raw):
        meta = model_metadata(client, args.deployment_id, args.model_version, args.timeout)
        declared = {t.name: t.datatype for t in meta.inputs}
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for name, value in raw:
        dtype = per_name.get(name) or everyone
        if dtype is None and declared is not None:
            if name not in declared:
                known = ", ".join(sorted(declared)) or "none"
                raise CliError(f"deployment {args.deployment_id} has no input {name!r} (inputs: {known})", code=2)
            dtype = declared[name]
        try:
            arrays[name] = tensors.to_array(value, dtype)
        except ValueError as exc:
            raise CliError(f"--input {name}: {exc}", code=2) from None
    return arrays


def response_json(resp: grpc_service_pb2.ModelInferResponse, decoded: dict[str, np.ndarray[Any, Any]]) -> str:
    """The response as JSON, raw bytes replaced by each output's decoded `data`."""
    data = json_format.MessageToDict(resp, preserving_proto_field_name=True)
    data.pop("raw_output_contents", None)
    inline: dict[str, str] = {}  # placeholders: shapes and values stay on one line each
    for i, out in enumerate(data.get("outputs", [])):
        out.pop("contents", None)
        for key, value in (("shape", [int(d) for d in out.get("shape", [])]),
                           ("data", tensors.json_safe(tensors.to_list(decoded[out["name"]])))):
            marker = f"@@{key}-{i}@@"
            inline[json.dumps(marker)] = json.dumps(value, allow_nan=False)
            out[key] = marker
    text = json.dumps(data, indent=2, allow_nan=False)
    for marker, value in inline.items():
        text = text.replace(marker, value, 1)
    return text


def format_output(name: str, datatype: str, arr: np.ndarray[Any, Any]) -> str:
    return f"{name} {datatype} {list(arr.shape)} = {json.dumps(tensors.to_list(arr))}"


def infer_command(args: argparse.Namespace, client: Client) -> int:
    arrays = resolve_inputs(client, args)
    resp, decoded = infer(client, args.deployment_id, arrays, outputs=args.outputs, version=args.model_version,
                          timeout=args.timeout)
    if args.json:
        print(response_json(resp, decoded))
        return 0
    for out in resp.outputs:
        print(format_output(out.name, out.datatype, decoded[out.name]))
    return 0
