"""KServe V2 tensors for the CLI: datatypes, `--input` values, raw coding.

Inputs travel as `raw_input_contents` (little-endian, row-major; BYTES as
4-byte little-endian length prefixes), as Triton's clients send them.
Outputs are decoded from `raw_output_contents` when the server sends them,
else from the typed `contents` fields.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.inference import grpc_service_pb2

_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
V2_DATATYPES = tuple(_NUMPY)

_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a V2 datatype name (FP32 → float32, BYTES → object)."""
    try:
        return _NUMPY[datatype.upper()]
    except KeyError:
        raise ValueError(f"unsupported datatype {datatype!r} (one of {', '.join(V2_DATATYPES)})") from None


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name of a numpy dtype (str/bytes/object → BYTES)."""
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    little = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    for name, candidate in _NUMPY.items():
        if name != "BYTES" and candidate == little:
            return name
    raise ValueError(f"numpy dtype {dtype} has no V2 datatype")


def parse_input_arg(text: str) -> tuple[str, Any]:
    """Split `NAME=@file.npy` / `NAME=@file.json` / `NAME=<JSON literal>`.

    Returns:
        (name, value): value is an ndarray for .npy files, else the decoded JSON.
    """
    name, sep, source = text.partition("=")
    if not sep or not name or not source:
        raise ValueError(f"invalid --input {text!r}: expected NAME=@file.npy or NAME=<JSON>, e.g. x=[[1,2,3,4]]")
    if source.startswith("@"):
        path = Path(source[1:])
        if not path.is_file():
            raise ValueError(f"--input {name}: no such file {str(path)!r}")
        if path.suffix.lower() == ".json":
            return name, json.loads(path.read_text())
        try:
            return name, np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"--input {name}: cannot read {str(path)!r} as .npy: {exc}") from None
    try:
        return name, json.loads(source)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--input {name}: invalid JSON {source!r}: {exc.msg}") from None


def to_array(value: Any, datatype: str | None) -> np.ndarray[Any, Any]:
    """Build the input array; `datatype` (V2) casts it, None keeps/guesses its type.

    A JSON value without a datatype becomes FP32 when it holds floats,
    INT64 for integers, BOOL for booleans and BYTES for strings.
    """
    if datatype is not None and datatype.upper() == "BYTES":
        arr = np.array(value, dtype=object)
        return arr
    if isinstance(value, np.ndarray):
        arr = value
    else:
        arr = np.array(value)
        if arr.dtype == np.float64 and datatype is None:
            arr = arr.astype(np.float32)
    if arr.dtype.kind in ("U", "S"):
        return arr.astype(object) if datatype is None else _cast(arr, datatype)
    if datatype is not None:
        return _cast(arr, datatype)
    return arr


def _range(dtype: np.dtype[Any]) -> tuple[Any, Any] | None:
    """(lowest, highest) value of a numeric dtype; None for BOOL and BYTES."""
    if dtype.kind in ("i", "u"):
        info = np.iinfo(dtype)
        return int(info.min), int(info.max)
    if dtype.kind == "f":
        finfo = np.finfo(dtype)
        return float(finfo.min), float(finfo.max)
    return None


def _check_range(arr: np.ndarray[Any, Any], datatype: str, dtype: np.dtype[Any]) -> None:
    """Refuse values the datatype cannot hold, instead of wrapping or overflowing to inf."""
    limits = _range(dtype)
    if limits is None or arr.size == 0 or arr.dtype.kind not in ("i", "u", "f", "O"):
        return
    values = arr.ravel()
    if arr.dtype.kind == "f":
        values = values[np.isfinite(values)]  # NaN and ±inf stay what they are
        if values.size == 0:
            return
    try:
        low, high = min(values.tolist()), max(values.tolist())
    except TypeError:
        return  # mixed object values: astype reports them
    lowest, highest = limits
    for value in (low, high):
        if not lowest <= value <= highest:
            raise ValueError(f"value {value!r} is out of the range of {datatype.upper()} ({lowest!r} to {highest!r})")


def _cast(arr: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, Any]:
    dtype = numpy_dtype(datatype)
    _check_range(arr, datatype, dtype)
    try:
        with np.errstate(all="raise"):
            return arr.astype(dtype)
    except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
        raise ValueError(f"cannot convert the value to {datatype.upper()}: {exc}") from None


def encode(arr: np.ndarray[Any, Any]) -> tuple[str, bytes]:
    """(V2 datatype, raw bytes) of an array."""
    datatype = v2_datatype(arr.dtype)
    if datatype == "BYTES":
        parts = []
        for item in arr.ravel():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return datatype, b"".join(parts)
    little = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    return datatype, np.ascontiguousarray(arr, dtype=little).tobytes()


def _decode_bytes(raw: bytes) -> list[bytes]:
    items, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ValueError("truncated BYTES tensor")
        (n,) = struct.unpack_from("<I", raw, pos)
        items.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    return items


def decode_output(response: grpc_service_pb2.ModelInferResponse, index: int) -> np.ndarray[Any, Any]:
    """The array of `response.outputs[index]` (raw contents or typed contents)."""
    out = response.outputs[index]
    shape = tuple(int(d) for d in out.shape)
    datatype = out.datatype.upper()
    if index < len(response.raw_output_contents):
        raw = response.raw_output_contents[index]
        if datatype == "BYTES":
            arr = np.empty(len(items := _decode_bytes(raw)), dtype=object)
            arr[:] = items
        else:
            arr = np.frombuffer(raw, dtype=numpy_dtype(datatype))
    else:
        field = _CONTENTS_FIELD.get(datatype)
        if field is None:
            raise ValueError(f"output {out.name}: {datatype} needs raw_output_contents")
        values = list(getattr(out.contents, field))
        arr = np.array(values, dtype=numpy_dtype(datatype)) if datatype != "BYTES" else np.array(values, dtype=object)
    try:
        return arr.reshape(shape)
    except ValueError:
        raise ValueError(f"output {out.name}: {arr.size} values do not fit shape {list(shape)}") from None


def _scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    if isinstance(value, (np.float16, np.float32)):
        return float(str(value))  # shortest text that round-trips, 0.1 not 0.10000000149
    if isinstance(value, np.generic):
        return value.item()
    return value


def json_safe(value: Any) -> Any:
    """`value` (from `to_list`) with NaN and ±inf as the strings "NaN", "Infinity",
    "-Infinity", as protobuf's JSON mapping writes them, so the text is valid JSON."""
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def to_list(arr: np.ndarray[Any, Any]) -> Any:
    """Nested Python lists of the array's values, JSON-ready."""
    if not isinstance(arr, np.ndarray):  # an element of an object (BYTES) array
        return _scalar(arr)
    if arr.ndim == 0:
        return _scalar(arr[()])
    return [to_list(arr[i]) for i in range(arr.shape[0])]
