"""The tensor form of `_infer` (pure: no I/O).

Elasticsearch's `{"docs": [{"text_field": ...}]}` feeds a tokenizer; these
models take tensors, so the body is the KServe V2 JSON tensor form:
`{"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]}`
with `data` flat or nested in row-major order. The answer is
`{"inference_results": [{"model_id", "model_version", "outputs": [{"name",
"shape", "datatype", "data"}]}]}`, data flat in row-major order.

The tensors themselves are read and written by the V2 REST codec
(control_plane.rest.v2_tensors), so both APIs accept and answer the same
data; only the envelope and the spelling of NaN and infinities (as
Elasticsearch's JSON writes them) differ."""

from __future__ import annotations

from typing import Any

from control_plane import errors
from control_plane.rest import v2_tensors
from modelfleet.inference import grpc_service_pb2 as pb


def infer_request(model_id: str, body: dict[str, Any]) -> pb.ModelInferRequest:
    """The V2 request of an `_infer` body (refusing the text `docs` form with what to send instead)."""
    if "docs" in body and "inputs" not in body:
        raise errors.InvalidArgument(
            "[docs] is for text models with a tokenizer; these models take tensors: send "
            '{"inputs": [{"name": ..., "shape": [...], "datatype": "FP32", "data": [...]}]}'
        )
    unknown = sorted(set(body) - {"inputs", "outputs", "id"})
    if unknown:
        raise errors.InvalidArgument(f"unknown field(s) in the _infer body: {', '.join(unknown)}; expected inputs, outputs")
    doc = dict(body)
    if "id" in doc:
        doc["id"] = str(doc["id"])
    if isinstance(doc.get("inputs"), list):
        # Elasticsearch's own APIs take enum values in either case
        doc["inputs"] = [{**t, "datatype": t["datatype"].upper()} if isinstance(t, dict) and isinstance(t.get("datatype"), str)
                         else t for t in doc["inputs"]]
    return v2_tensors.decode_document(doc, binary=b"", model_name=model_id, model_version="").request


def parse_answer(reply: bytes) -> pb.ModelInferResponse:
    return pb.ModelInferResponse.FromString(reply)


def infer_answer(resp: pb.ModelInferResponse) -> dict[str, Any]:
    """`{"inference_results": [...]}` of a V2 answer."""
    outputs = [{"name": o.name, "shape": list(o.shape), "datatype": o.datatype,
                "data": v2_tensors.unpack(o.name, o.datatype.upper(), v2_tensors.output_raw(resp, i),
                                          nonfinite=v2_tensors.JSON_MAPPING_NONFINITE, lossy_bytes=True)}
               for i, o in enumerate(resp.outputs)]
    return {"inference_results": [{"model_id": resp.model_name, "model_version": resp.model_version, "outputs": outputs}]}
