"""KServe V2 datatype names and their numpy element types.

This module owns the one mapping between the V2 names on the wire (BOOL,
UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES) and numpy dtypes, and
the onnxruntime type strings ("tensor(float)") onto V2 names. Fixed-size types
travel little-endian; BYTES tensors are numpy object arrays of `bytes`.
BF16 is a V2 name but numpy has no such type, so models using it are refused
at load. Pure functions over immutable tables: safe from any thread.
"""

from __future__ import annotations

import numpy as np

BYTES = "BYTES"

# V2 name -> numpy dtype (explicitly little-endian: the wire byte order).
_V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    BYTES: np.dtype(object),
}

# numpy kind+itemsize -> V2 name, for naming what a model produced.
_NUMPY_TO_V2: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in _V2_TO_NUMPY.items() if name != BYTES
}

V2_DATATYPES: frozenset[str] = frozenset(_V2_TO_NUMPY)

# onnxruntime NodeArg.type -> V2 name.
ONNX_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": BYTES,
}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a V2 datatype name.

    Raises:
        ValueError: the name is not a V2 datatype numpy can hold.
    """
    try:
        return _V2_TO_NUMPY[datatype]
    except KeyError:
        raise ValueError(f"unsupported datatype {datatype!r}; expected one of {sorted(V2_DATATYPES)}") from None


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 name of a numpy dtype (object, bytes and str arrays are BYTES).

    Raises:
        ValueError: numpy type with no V2 equivalent (complex, datetime, ...).
    """
    if dtype.kind in "OSU":
        return BYTES
    try:
        return _NUMPY_TO_V2[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no V2 datatype") from None


def element_size(datatype: str) -> int | None:
    """Bytes per element of a fixed-size V2 datatype; None for BYTES."""
    if datatype == BYTES:
        return None
    return numpy_dtype(datatype).itemsize


def wire_array(array: np.ndarray) -> np.ndarray:
    """`array` as the wire wants it: C-contiguous and little-endian.

    Copies only when the array is not already so (the common case copies
    nothing). BYTES (object/str/bytes) arrays are returned C-contiguous.

    Raises:
        ValueError: the dtype has no V2 equivalent.
    """
    datatype = v2_datatype(array.dtype)
    if datatype == BYTES:
        return np.asarray(array, dtype=object, order="C")
    return np.asarray(array, dtype=_V2_TO_NUMPY[datatype], order="C")
