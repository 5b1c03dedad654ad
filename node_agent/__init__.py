"""The node agent: one daemon per host, plus the programs it supervises.

`node_agent.runtime` loads one model file into onnxruntime or torch behind a
transport-free `Runtime` interface (and `python -m node_agent.runtime.probe`
validates a file in a throwaway process). `node_agent.worker` is the
inference worker process the agent starts per allocation
(`python -m node_agent.worker`). The agent daemon itself talks to the control
plane over `modelfleet.v1.AgentControl`. This package never imports
`control_plane`; the two meet only through the protos and processes.
"""
