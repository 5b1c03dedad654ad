"""gRPC servicers of the control plane: protobuf in, service call, protobuf
out. Nothing else happens here; errors are mapped by the interceptor in
control_plane.api.server, callers are authenticated and authorized by the one
in control_plane.auth.access (which also tells `caller()` who is calling), and
the logic lives in registry, deployments, agents, keys and gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from control_plane.auth.access import caller, current_principal
from control_plane.auth.keys import KeyService
from control_plane.deployments.service import DeploymentService
from control_plane.models.registry import ModelRegistry
from control_plane.nodes.agents import AgentStreams, NodeService
from modelfleet.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    deployments_pb2_grpc,
    models_pb2_grpc,
    nodes_pb2_grpc,
)
from modelfleet.v1 import (
    deployments_pb2 as dpb,
)
from modelfleet.v1 import (
    models_pb2 as mpb,
)
from modelfleet.v1 import (
    nodes_pb2 as npb,
)

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]

__all__ = [
    "AgentControlServicer", "AuthServicer", "DeploymentsServicer", "ModelRegistryServicer", "NodesServicer", "caller",
]  # fmt: skip


class ModelRegistryServicer(models_pb2_grpc.ModelRegistryServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def UploadModel(self, request_iterator: AsyncIterator[mpb.UploadModelRequest], context: Ctx) -> mpb.Model:
        return await self.registry.upload(request_iterator)

    async def GetModel(self, request: mpb.GetModelRequest, context: Ctx) -> mpb.Model:
        return self.registry.get(request.model_id, request.version)

    async def ListModels(self, request: mpb.ListModelsRequest, context: Ctx) -> mpb.ListModelsResponse:
        return self.registry.list_page(request)

    async def DeleteModel(self, request: mpb.DeleteModelRequest, context: Ctx) -> mpb.DeleteModelResponse:
        return mpb.DeleteModelResponse(deleted=self.registry.delete(request.model_id, request.version))

    async def DownloadModel(self, request: mpb.DownloadModelRequest, context: Ctx) -> AsyncIterator[mpb.DownloadModelResponse]:
        async for chunk in self.registry.download(request.model_id, request.version):
            yield chunk


class DeploymentsServicer(deployments_pb2_grpc.DeploymentsServicer):
    def __init__(self, service: DeploymentService) -> None:
        self.service = service

    async def StartDeployment(self, request: dpb.StartDeploymentRequest, context: Ctx) -> dpb.StartDeploymentResponse:
        return await self.service.start(request, owner=caller(context))

    async def StopDeployment(self, request: dpb.StopDeploymentRequest, context: Ctx) -> dpb.StopDeploymentResponse:
        return await self.service.stop(request)

    async def UpdateDeployment(self, request: dpb.UpdateDeploymentRequest, context: Ctx) -> dpb.UpdateDeploymentResponse:
        return await self.service.update(request)

    async def DeleteDeployment(self, request: dpb.DeleteDeploymentRequest, context: Ctx) -> dpb.DeleteDeploymentResponse:
        return self.service.delete(request)

    async def GetDeployment(self, request: dpb.GetDeploymentRequest, context: Ctx) -> dpb.Deployment:
        return self.service.read(request)

    async def ListDeployments(self, request: dpb.ListDeploymentsRequest, context: Ctx) -> dpb.ListDeploymentsResponse:
        return self.service.list(request)

    async def GetDeploymentStats(self, request: dpb.GetDeploymentStatsRequest, context: Ctx) -> dpb.GetDeploymentStatsResponse:
        return self.service.stats(request.deployment_id)

    async def ListDeploymentEvents(self, request: dpb.ListDeploymentEventsRequest, context: Ctx) -> dpb.ListDeploymentEventsResponse:
        return self.service.list_events(request)

    async def WatchDeployment(self, request: dpb.WatchDeploymentRequest, context: Ctx) -> AsyncIterator[dpb.WatchDeploymentResponse]:
        async for snapshot in self.service.watch(request.deployment_id, after_seq=request.after_seq):
            yield snapshot


class NodesServicer(nodes_pb2_grpc.NodesServicer):
    def __init__(self, service: NodeService) -> None:
        self.service = service

    async def ListNodes(self, request: npb.ListNodesRequest, context: Ctx) -> npb.ListNodesResponse:
        return self.service.list(request)

    async def GetNode(self, request: npb.GetNodeRequest, context: Ctx) -> npb.Node:
        return self.service.get(request.node_id)

    async def DrainNode(self, request: npb.DrainNodeRequest, context: Ctx) -> npb.Node:
        return self.service.drain(request.node_id)

    async def UncordonNode(self, request: npb.UncordonNodeRequest, context: Ctx) -> npb.Node:
        return self.service.uncordon(request.node_id)


class AgentControlServicer(agent_pb2_grpc.AgentControlServicer):
    def __init__(self, streams: AgentStreams) -> None:
        self.streams = streams

    async def Connect(self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: Ctx) -> AsyncIterator[agent_pb2.ControlMessage]:
        async for message in self.streams.connect(request_iterator, principal=current_principal()):
            yield message


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(self, keys: KeyService) -> None:
        self.keys = keys

    async def CreateApiKey(self, request: auth_pb2.CreateApiKeyRequest, context: Ctx) -> auth_pb2.CreateApiKeyResponse:
        return self.keys.create(request, creator=current_principal())

    async def ListApiKeys(self, request: auth_pb2.ListApiKeysRequest, context: Ctx) -> auth_pb2.ListApiKeysResponse:
        return self.keys.list(request)

    async def RevokeApiKey(self, request: auth_pb2.RevokeApiKeyRequest, context: Ctx) -> auth_pb2.RevokeApiKeyResponse:
        return self.keys.revoke(request, caller=current_principal())

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Ctx) -> auth_pb2.WhoAmIResponse:
        return self.keys.whoami(current_principal(), user=caller(context))
