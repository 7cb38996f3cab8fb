"""RuntimeService container calls: lifecycle, status, list, log reopening, resource updates."""

from __future__ import annotations

from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt.cri import answers, convert
from qmprt.cri.backend import Handlers
from qmprt.errors import InvalidArgument, NotFound


class ContainerHandlers(Handlers):
    async def CreateContainer(
        self, request: cri.CreateContainerRequest, context: Any
    ) -> cri.CreateContainerResponse:
        convert.require_id(request.pod_sandbox_id, "pod_sandbox_id")
        if not request.HasField("config"):
            raise InvalidArgument("CreateContainer needs a container config")
        spec = convert.container_spec(request.config)
        container_id = await self.runtime.create_container(request.pod_sandbox_id, spec)
        return cri.CreateContainerResponse(container_id=container_id)

    async def StartContainer(self, request: cri.StartContainerRequest, context: Any) -> cri.StartContainerResponse:
        convert.require_id(request.container_id, "container_id")
        await self.runtime.start_container(request.container_id)
        return cri.StartContainerResponse()

    async def StopContainer(self, request: cri.StopContainerRequest, context: Any) -> cri.StopContainerResponse:
        convert.require_id(request.container_id, "container_id")
        await self.runtime.stop_container(request.container_id, max(0, request.timeout))
        return cri.StopContainerResponse()

    async def RemoveContainer(
        self, request: cri.RemoveContainerRequest, context: Any
    ) -> cri.RemoveContainerResponse:
        convert.require_id(request.container_id, "container_id")
        await self.runtime.remove_container(request.container_id)
        return cri.RemoveContainerResponse()

    async def ListContainers(self, request: cri.ListContainersRequest, context: Any) -> cri.ListContainersResponse:
        wanted = request.filter
        state = convert.container_state_filter(wanted.state.state) if wanted.HasField("state") else None
        try:
            found = self.runtime.list_containers(
                id=wanted.id, state=state, sandbox_id=wanted.pod_sandbox_id, labels=dict(wanted.label_selector)
            )
        except NotFound:
            found = []  # a filter on an id nobody has matches nothing; it is not an error
        return cri.ListContainersResponse(containers=[answers.container(info) for info in found])

    async def ContainerStatus(
        self, request: cri.ContainerStatusRequest, context: Any
    ) -> cri.ContainerStatusResponse:
        convert.require_id(request.container_id, "container_id")
        info = self.runtime.container(request.container_id)
        verbose = {}
        if request.verbose:
            verbose = answers.verbose_info(
                {
                    "id": info.id,
                    "sandboxID": info.sandbox_id,
                    "imageRef": info.image_ref,
                    "logPath": info.log_path,
                    "spec": info.spec,
                    "status": info.status.to_json(),
                }
            )
        return cri.ContainerStatusResponse(status=answers.container_status(info), info=verbose)

    async def ReopenContainerLog(
        self, request: cri.ReopenContainerLogRequest, context: Any
    ) -> cri.ReopenContainerLogResponse:
        convert.require_id(request.container_id, "container_id")
        await self.runtime.reopen_log(request.container_id)
        return cri.ReopenContainerLogResponse()

    async def UpdateContainerResources(
        self, request: cri.UpdateContainerResourcesRequest, context: Any
    ) -> cri.UpdateContainerResourcesResponse:
        convert.require_id(request.container_id, "container_id")
        if not request.HasField("linux"):
            raise InvalidArgument("UpdateContainerResources needs linux resources: qmprt runs Linux guests only")
        resources = convert.resources(request.linux, "linux")
        await self.runtime.update_resources(request.container_id, resources)
        return cri.UpdateContainerResourcesResponse()
