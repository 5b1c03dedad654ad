"""The reference for what Python gRPC itself costs: a minimal grpcio server
wrapping one onnxruntime session, speaking the same KServe V2 ModelInfer
messages as modelfleet (raw_input_contents in, raw_output_contents out).

    python benchmarks/reference_server.py MODEL.onnx --port-file F [--threads 2] [--workers 16]

No queue, no validation beyond what numpy does, no statistics: a grpc.server
with a thread pool of `--workers` handlers, each calling session.run on the
handler thread. The session has `--threads` intra-op threads.
"""

from __future__ import annotations

import argparse
import sys
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from modelfleet.inference import grpc_service_pb2 as pb  # noqa: E402
from modelfleet.inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402


class Reference(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, path: str, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(tuple(tensor.shape))
        (y,) = self.session.run(None, {tensor.name: x})
        reply = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        reply.outputs.add(name="y", datatype="FP32", shape=y.shape)
        reply.raw_output_contents.append(y.tobytes())
        return reply


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--port-file", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=16)
    args = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Reference(args.model, args.threads), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Path(args.port_file).write_text(str(port))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
