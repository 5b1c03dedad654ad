"""The inference worker: one process per allocation, serving one model.

`python -m node_agent.worker` (see `node_agent.worker.main`) loads the model
through `node_agent.runtime`, runs `model_threads` OS threads over one bounded
queue (`workqueue`), and serves KServe V2 `inference.GRPCInferenceService`,
`modelfleet.v1.WorkerControl`, gRPC health and reflection from one grpc.aio
server (`server` -> `servicer` -> `service` -> runtime). Domain errors live in
`errors` and become status codes in the server's one interceptor.
"""
