"""HTTP/REST beside gRPC: the KServe V2 REST surface served with aiohttp on the control plane's event loop."""
