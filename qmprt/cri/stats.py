"""RuntimeService stats calls: per container and per pod sandbox, single and listed.

The pod layer samples cgroups and overlays; nothing here asks a VM. The metrics calls serve the
cAdvisor-style metrics of ``qmprt.pod.metrics``. Filters behave like the list
calls: an id that matches nothing gives an empty list, not an error.
"""

from __future__ import annotations

from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt.cri import answers, convert
from qmprt.cri.backend import Handlers
from qmprt.errors import NotFound


class StatsHandlers(Handlers):
    async def ContainerStats(self, request: cri.ContainerStatsRequest, context: Any) -> cri.ContainerStatsResponse:
        convert.require_id(request.container_id, "container_id")
        info = await self.runtime.container_stats(request.container_id)
        return cri.ContainerStatsResponse(stats=answers.container_stats(info))

    async def ListContainerStats(
        self, request: cri.ListContainerStatsRequest, context: Any
    ) -> cri.ListContainerStatsResponse:
        wanted = request.filter
        try:
            found = await self.runtime.list_container_stats(
                id=wanted.id, sandbox_id=wanted.pod_sandbox_id, labels=dict(wanted.label_selector)
            )
        except NotFound:
            found = []
        return cri.ListContainerStatsResponse(stats=[answers.container_stats(info) for info in found])

    async def PodSandboxStats(
        self, request: cri.PodSandboxStatsRequest, context: Any
    ) -> cri.PodSandboxStatsResponse:
        convert.require_id(request.pod_sandbox_id, "pod_sandbox_id")
        info = await self.runtime.sandbox_stats(request.pod_sandbox_id)
        return cri.PodSandboxStatsResponse(stats=answers.pod_sandbox_stats(info))

    async def ListPodSandboxStats(
        self, request: cri.ListPodSandboxStatsRequest, context: Any
    ) -> cri.ListPodSandboxStatsResponse:
        wanted = request.filter
        try:
            found = await self.runtime.list_sandbox_stats(id=wanted.id, labels=dict(wanted.label_selector))
        except NotFound:
            found = []
        return cri.ListPodSandboxStatsResponse(stats=[answers.pod_sandbox_stats(info) for info in found])

    async def ListMetricDescriptors(
        self, request: cri.ListMetricDescriptorsRequest, context: Any
    ) -> cri.ListMetricDescriptorsResponse:
        return cri.ListMetricDescriptorsResponse(descriptors=answers.metric_descriptors())

    async def ListPodSandboxMetrics(
        self, request: cri.ListPodSandboxMetricsRequest, context: Any
    ) -> cri.ListPodSandboxMetricsResponse:
        found = await self.runtime.list_sandbox_metrics()
        return cri.ListPodSandboxMetricsResponse(pod_metrics=[answers.pod_sandbox_metrics(info) for info in found])
