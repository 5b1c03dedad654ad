"""Hypothesis strategies built from protobuf descriptors, for fuzzing RPCs.

`message_strategy(descriptor)` draws instances of any message type by
walking its fields: every scalar type over its whole range (plus small and
boundary values, NaN and infinities for floats), open enums (known values
and unknown numbers), repeated fields and maps, at most one field of each
oneof, nested messages down to a depth limit (well-known types included:
a Duration or Timestamp may be out of range). Strings are drawn from free
text and from a vocabulary of ids the server knows, so requests also reach
past the "not found" checks. `request_strategy(method)` gives what a method
takes: one message, or a short list of them for a client stream; a
fraction are raw bytes that may not parse at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor as d
from google.protobuf import message_factory
from hypothesis import strategies as st

MAX_DEPTH = 3
MAX_REPEATED = 3
_INT_RANGES = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    small = st.integers(max(low, -3), min(high, 300))
    edges = st.sampled_from(sorted({low, high, 0, 1, max(low, -1), min(high, 2**31 - 1), min(high, 1_000_001)}))
    return st.one_of(small, edges, st.integers(low, high))


class Vocabulary:
    """Strings worth trying besides random text (ids the server knows)."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)

    def strings(self) -> st.SearchStrategy[str]:
        text = st.text(max_size=24)
        return st.one_of(st.sampled_from(self.words), text) if self.words else text


def _scalar(field: d.FieldDescriptor, vocab: Vocabulary) -> st.SearchStrategy[Any]:
    t = field.type
    if t in _INT_RANGES:
        return _integers(*_INT_RANGES[t])
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == d.FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if t == d.FieldDescriptor.TYPE_FLOAT:
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == d.FieldDescriptor.TYPE_STRING:
        return vocab.strings()
    if t == d.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == d.FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), _integers(-(2**31), 2**31 - 1))
    raise AssertionError(f"unhandled field type {t} of {field.full_name}")


def _value(field: d.FieldDescriptor, vocab: Vocabulary, depth: int) -> st.SearchStrategy[Any]:
    if field.type in (d.FieldDescriptor.TYPE_MESSAGE, d.FieldDescriptor.TYPE_GROUP):
        return message_strategy(field.message_type, vocab, depth + 1)
    return _scalar(field, vocab)


@st.composite
def _message(draw: st.DrawFn, descriptor: d.Descriptor, vocab: Vocabulary, depth: int) -> Any:
    cls = message_factory.GetMessageClass(descriptor)
    message = cls()
    if depth > MAX_DEPTH:
        return message
    chosen_oneof = {o.name: draw(st.sampled_from([None, *o.fields])) for o in descriptor.oneofs}
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen_oneof[oneof.name] is not field:
            continue
        if oneof is None and not draw(st.booleans()):
            continue  # leave it unset: defaults matter as much as values
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            entries = draw(st.dictionaries(_scalar(key_field, vocab), _value(value_field, vocab, depth), max_size=MAX_REPEATED))
            target = getattr(message, field.name)
            for key, value in entries.items():
                if value_field.message_type is not None:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_value(field, vocab, depth), max_size=MAX_REPEATED)))
        elif field.message_type is not None:
            getattr(message, field.name).CopyFrom(draw(_value(field, vocab, depth)))
        else:
            setattr(message, field.name, draw(_value(field, vocab, depth)))
    return message


def message_strategy(descriptor: d.Descriptor, vocab: Vocabulary, depth: int = 0) -> st.SearchStrategy[Any]:
    return _message(descriptor, vocab, depth)


def request_strategy(method: d.MethodDescriptor, vocab: Vocabulary) -> st.SearchStrategy[Any]:
    """What the method takes: a message, a list of 0-3 for a client stream; sometimes raw bytes."""
    message = message_strategy(method.input_type, vocab).map(lambda m: m.SerializeToString())
    one = st.one_of(message, message, message, st.binary(max_size=48))  # a quarter raw bytes
    if method.client_streaming:
        return st.lists(one, max_size=MAX_REPEATED)
    return one


V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                "FP16", "FP32", "FP64", "BYTES"]  # fmt: skip


@st.composite
def infer_request(draw: st.DrawFn, model: str, input_name: str, output_name: str) -> bytes:
    """A ModelInferRequest near a valid one for `model` (x FP32 [-1, 4] -> y): every part
    may be off a little, so requests reach deep into validation and, often, the model."""
    from modelfleet.inference import grpc_service_pb2 as pb

    req = pb.ModelInferRequest(model_name=draw(st.sampled_from([model, model, model, "", "other"])),
                               id=draw(st.text(max_size=8)))  # fmt: skip
    raw_mode = draw(st.booleans())
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        rows = draw(st.integers(0, 3))
        shape = draw(st.sampled_from([[rows, 4], [rows, 4], [rows], [rows, 5], [-1, 4], [2**40, 2**40], []]))
        datatype = draw(st.sampled_from(["FP32"] * 6 + V2_DATATYPES))
        tensor = req.inputs.add(name=draw(st.sampled_from([input_name] * 4 + ["z", ""])), datatype=datatype, shape=shape)
        size = 16 * rows if rows else 0
        if raw_mode:
            req.raw_input_contents.append(draw(st.one_of(st.just(bytes(size)), st.binary(max_size=40))))
            if draw(st.integers(0, 9)) == 0:
                tensor.contents.fp32_contents.append(1.0)
        else:
            count = draw(st.sampled_from([4 * rows, 4 * rows, 3]))
            field = draw(st.sampled_from(["fp32_contents"] * 4 + ["int_contents", "bytes_contents", "int64_contents"]))
            values = {"fp32_contents": 0.5, "int_contents": 7, "int64_contents": -1, "bytes_contents": b"ab"}[field]
            getattr(tensor.contents, field).extend([values] * count)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        req.outputs.add(name=draw(st.sampled_from([output_name, output_name, "nope"])))
    return req.SerializeToString()
