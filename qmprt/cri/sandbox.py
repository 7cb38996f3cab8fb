"""RuntimeService pod sandbox calls: Run/Stop/Remove, status and list."""

from __future__ import annotations

import time
from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt.cri import answers, convert
from qmprt.cri.backend import Handlers
from qmprt.errors import InvalidArgument, NotFound


class SandboxHandlers(Handlers):
    def _check_handler(self, runtime_handler: str) -> None:
        accepted = ("", *self.runtime.config.runtime.handlers)
        if runtime_handler not in accepted:
            names = ", ".join(repr(name) for name in accepted)
            raise InvalidArgument(
                f"unknown runtime handler {runtime_handler!r}: this qmprt serves {names} "
                "(runtime.handlers in its config)"
            )

    async def RunPodSandbox(self, request: cri.RunPodSandboxRequest, context: Any) -> cri.RunPodSandboxResponse:
        if not request.HasField("config"):
            raise InvalidArgument("RunPodSandbox needs a pod sandbox config")
        self._check_handler(request.runtime_handler)
        spec = convert.sandbox_spec(request.config, request.runtime_handler)
        sandbox_id = await self.runtime.run_sandbox(spec)
        return cri.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def StopPodSandbox(self, request: cri.StopPodSandboxRequest, context: Any) -> cri.StopPodSandboxResponse:
        convert.require_id(request.pod_sandbox_id, "pod_sandbox_id")
        await self.runtime.stop_sandbox(request.pod_sandbox_id)
        return cri.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: cri.RemovePodSandboxRequest, context: Any
    ) -> cri.RemovePodSandboxResponse:
        convert.require_id(request.pod_sandbox_id, "pod_sandbox_id")
        await self.runtime.remove_sandbox(request.pod_sandbox_id)
        return cri.RemovePodSandboxResponse()

    async def PodSandboxStatus(
        self, request: cri.PodSandboxStatusRequest, context: Any
    ) -> cri.PodSandboxStatusResponse:
        convert.require_id(request.pod_sandbox_id, "pod_sandbox_id")
        info = self.runtime.sandbox(request.pod_sandbox_id)
        verbose = {}
        if request.verbose:
            verbose = answers.verbose_info(
                {
                    "id": info.id, "spec": info.spec, "status": info.status.to_json(),
                    "network": self.runtime.sandbox_network(info.id),
                }
            )
        return cri.PodSandboxStatusResponse(
            status=answers.pod_sandbox_status(info), info=verbose, timestamp=time.time_ns()
        )

    async def ListPodSandbox(self, request: cri.ListPodSandboxRequest, context: Any) -> cri.ListPodSandboxResponse:
        wanted = request.filter
        state = convert.sandbox_state_filter(wanted.state.state) if wanted.HasField("state") else None
        try:
            found = self.runtime.list_sandboxes(id=wanted.id, state=state, labels=dict(wanted.label_selector))
        except NotFound:
            found = []  # a filter on an id nobody has matches nothing; it is not an error
        return cri.ListPodSandboxResponse(items=[answers.pod_sandbox(info) for info in found])
