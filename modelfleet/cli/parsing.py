"""Pure parsers for command-line values: durations, byte sizes, tensor specs.

Every parser raises `ValueError` with a message that names the bad value;
`argparse` turns that into a usage error (exit 2) when the parser is used as
a `type=`, and `main` turns it into one `error:` line otherwise.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from modelfleet.v1 import common_pb2

T = TypeVar("T")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|d|h|m|s)")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float:
    """Parse "1m", "30s", "500ms", "2h", "1m30s" or plain seconds ("20", "1.5").

    Returns:
        The duration in seconds (>= 0).
    """
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise ValueError(f"invalid duration {text!r} (use e.g. 30s, 1m, 500ms, 2h or seconds)") from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"invalid duration {text!r}: must be a finite number >= 0")
    return seconds


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_bytes(text: str) -> int:
    """Parse a byte size: "1073741824", "512Mi", "2GiB", "1.5G", "100kb"."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"invalid size {text!r} (use e.g. 512Mi, 2GiB or bytes)")
    unit = (match.group(2) or "").lower()
    if unit not in ("b",):
        unit = unit.removesuffix("b")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_tensor_spec(text: str) -> common_pb2.TensorSpec:
    """Parse `name:DTYPE:dims`, e.g. `x:FP32:-1,4` or `x:FP32:[-1,4]`.

    The dims part may be empty (a scalar) and is comma separated; -1 marks a
    dynamic dimension. DTYPE is a V2 datatype name (FP32, INT64, ...).
    """
    parts = text.split(":")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise ValueError(f"invalid tensor spec {text!r} (expected name:DTYPE:dims, e.g. x:FP32:-1,4)")
    name, dtype, dims_text = parts
    dims_text = dims_text.strip().removeprefix("[").removesuffix("]").strip()
    try:
        dims = [int(d) for d in dims_text.split(",")] if dims_text else []
    except ValueError:
        raise ValueError(f"invalid dims {dims_text!r} in tensor spec {text!r}") from None
    if any(d < -1 for d in dims):
        raise ValueError(f"invalid dims in tensor spec {text!r}: use -1 for a dynamic dimension")
    return common_pb2.TensorSpec(name=name, datatype=dtype.upper(), shape=dims)


def parse_key_value(text: str) -> tuple[str, str]:
    """Parse `KEY=VALUE` (the value may contain '=')."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"invalid {text!r}: expected KEY=VALUE")
    return key, value


_FORMATS = {
    ".onnx": common_pb2.MODEL_FORMAT_ONNX,
    ".pt": common_pb2.MODEL_FORMAT_TORCHSCRIPT,
    ".pth": common_pb2.MODEL_FORMAT_TORCHSCRIPT,
    ".torchscript": common_pb2.MODEL_FORMAT_TORCHSCRIPT,
}


def model_format(path: Path, explicit: str | None) -> int:
    """The ModelFormat enum for an upload: `explicit` or from the file extension."""
    if explicit:
        return {"onnx": common_pb2.MODEL_FORMAT_ONNX, "torchscript": common_pb2.MODEL_FORMAT_TORCHSCRIPT}[explicit]
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format of {str(path)!r} from its extension; pass --format onnx|torchscript")
    return fmt


def arg_type(parser: Callable[[str], T], what: str | None = None) -> Callable[[str], T]:
    """Wrap a parser for argparse `type=` so its ValueError message is shown."""

    def wrapped(text: str) -> T:
        try:
            return parser(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapped.__name__ = what or parser.__name__
    return wrapped


def positive_int(text: str) -> int:
    """An int >= 0 (0 means "the server's default" in every request field)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid integer {text!r}") from None
    if value < 0:
        raise ValueError(f"{value} must be >= 0")
    return value
