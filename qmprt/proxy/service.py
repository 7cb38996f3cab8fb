"""The proxy's CRI handlers: each RPC of RuntimeService and ImageService, routed by ``Router``.

Every call reaches a downstream with what is left of the caller's deadline. Answers pass through as
the downstream gave them (streaming URLs included: kubelet connects to the runtime's own streaming
server); the proxy only adds the id bookkeeping of RunPodSandbox, CreateContainer and the removals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt import __version__
from qmprt.proxy import merge
from qmprt.proxy.downstream import DownstreamClient, Relayed
from qmprt.proxy.routes import CONTAINER_CALLS, IDEMPOTENT, REMOVALS, SANDBOX_CALLS, Router, implemented, not_found

log = logging.getLogger(__name__)

Handler = Callable[[Any, Any], Coroutine[Any, Any, Any]]
EVENTS_RETRY_S = 1.0


def _timeout(context: Any) -> float | None:
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None else max(remaining, 0.001)


class ProxyService:
    def __init__(self, router: Router) -> None:
        self.router = router

    def _probe(self, context: Any) -> float:
        """How long Status and Version wait for each downstream: a dead one must not hold kubelet's call."""
        probe = self.router.config.probe_timeout_seconds
        return min(_timeout(context) or probe, probe)

    def handler(self, method: str) -> Handler:
        """The coroutine serving ``method``."""
        own = getattr(self, method, None)
        if own is not None:
            return own  # type: ignore[no-any-return]
        if method in SANDBOX_CALLS:
            return self._by_owner(method, "sandboxes", "pod_sandbox_id")
        if method in CONTAINER_CALLS:
            return self._by_owner(method, "containers", "container_id")
        raise KeyError(method)

    def _by_owner(self, method: str, kind: str, field: str) -> Handler:
        async def call(request: Any, context: Any) -> Any:
            identifier = getattr(request, field)
            client = await self.router.owner(kind, identifier, field)
            if client is None:
                if method in IDEMPOTENT:
                    return IDEMPOTENT[method]()
                raise not_found(kind, identifier)
            try:
                answer = await client.call(method, request, _timeout(context))
            except Relayed as err:
                if method in REMOVALS and err.code.name == "NOT_FOUND":
                    await self.router.owners.remove(kind, identifier)
                raise
            if method == "CreateContainer":
                await self.router.owners.add("containers", answer.container_id, client.name)
            elif method in REMOVALS:
                await self.router.owners.remove(kind, identifier)
            return answer

        return call

    # -- pods -------------------------------------------------------------------------------------

    async def RunPodSandbox(self, request: cri.RunPodSandboxRequest, context: Any) -> cri.RunPodSandboxResponse:
        client = self.router.for_handler(request.runtime_handler)
        answer: cri.RunPodSandboxResponse = await client.call("RunPodSandbox", request, _timeout(context))
        await self.router.owners.add("sandboxes", answer.pod_sandbox_id, client.name)
        self.router.pod_started(request.config.metadata, client.name)
        return answer

    async def _merged_list(self, method: str, request: Any, context: Any, matches: Any, field: str) -> list[Any]:
        started = time.monotonic()
        answers = await self.router.each(method, request, _timeout(context))
        whole = merge.unfiltered(request)
        items: list[Any] = []
        for name, answer in answers.items():
            if isinstance(answer, Exception):
                if isinstance(answer, Relayed):
                    raise answer
                items.extend(item for item in self.router.last_list(name, method) if matches(item, request.filter))
                continue
            listed = list(getattr(answer, field))
            if whole:
                await self.router.remember(name, method, listed, started)
            items.extend(listed)
        return items

    async def ListPodSandbox(self, request: cri.ListPodSandboxRequest, context: Any) -> cri.ListPodSandboxResponse:
        items = await self._merged_list("ListPodSandbox", request, context, merge.sandbox_matches, "items")
        return cri.ListPodSandboxResponse(items=items)

    async def ListContainers(self, request: cri.ListContainersRequest, context: Any) -> cri.ListContainersResponse:
        items = await self._merged_list("ListContainers", request, context, merge.container_matches, "containers")
        return cri.ListContainersResponse(containers=items)

    async def ListContainerStats(self, request: cri.ListContainerStatsRequest, context: Any) -> Any:
        answers = implemented(await self.router.each("ListContainerStats", request, _timeout(context)))
        return cri.ListContainerStatsResponse(stats=[stat for answer in answers for stat in answer.stats])

    async def ListPodSandboxStats(self, request: cri.ListPodSandboxStatsRequest, context: Any) -> Any:
        answers = implemented(await self.router.each("ListPodSandboxStats", request, _timeout(context)))
        return cri.ListPodSandboxStatsResponse(stats=[stat for answer in answers for stat in answer.stats])

    async def ListPodSandboxMetrics(self, request: cri.ListPodSandboxMetricsRequest, context: Any) -> Any:
        answers = implemented(await self.router.each("ListPodSandboxMetrics", request, _timeout(context)))
        return cri.ListPodSandboxMetricsResponse(pod_metrics=[m for answer in answers for m in answer.pod_metrics])

    async def ListMetricDescriptors(self, request: cri.ListMetricDescriptorsRequest, context: Any) -> Any:
        return merge.descriptors(implemented(await self.router.each("ListMetricDescriptors", request, _timeout(context))))

    # -- the runtime ------------------------------------------------------------------------------

    async def Version(self, request: cri.VersionRequest, context: Any) -> cri.VersionResponse:
        answers = await self.router.each("Version", request, self._probe(context))
        return merge.version(__version__, answers)

    async def Status(self, request: cri.StatusRequest, context: Any) -> cri.StatusResponse:
        answers = await self.router.each("Status", request, self._probe(context))
        return merge.status(self.router.default.name, answers, request.verbose)

    async def RuntimeConfig(self, request: cri.RuntimeConfigRequest, context: Any) -> Any:
        return await self.router.default.call("RuntimeConfig", request, _timeout(context))

    async def UpdateRuntimeConfig(self, request: cri.UpdateRuntimeConfigRequest, context: Any) -> Any:
        """To every downstream (the pod CIDR concerns them all); the default's error is the answer."""
        answers = await self.router.each("UpdateRuntimeConfig", request, _timeout(context))
        for name, answer in answers.items():
            if isinstance(answer, Exception):
                if name == self.router.default.name:
                    raise answer
                log.warning("UpdateRuntimeConfig on %s: %s", name, answer)
        return cri.UpdateRuntimeConfigResponse()

    async def GetContainerEvents(self, request: cri.GetEventsRequest, context: Any) -> AsyncIterator[Any]:
        """Every downstream's events in one stream. One that is down or restarts is asked again
        every second while the caller listens; one that lacks the call is left out."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1024)
        followers = [asyncio.ensure_future(self._follow(client, request, queue)) for client in self.router.clients.values()]
        try:
            while True:
                event = await queue.get()
                if isinstance(event, Exception):
                    raise event
                yield event
        finally:
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)

    async def _follow(self, client: DownstreamClient, request: Any, queue: asyncio.Queue[Any]) -> None:
        while True:
            try:
                async for event in client.stream("GetContainerEvents", request):
                    await queue.put(event)
            except Relayed as err:
                if err.code.name == "UNIMPLEMENTED":
                    log.info("%s has no GetContainerEvents: its events are left out", client.name)
                    return
                log.debug("events of %s ended: %s", client.name, err)
            except Exception as err:  # noqa: BLE001 - a downstream restarting; ask again
                log.debug("events of %s ended: %s", client.name, err)
            await asyncio.sleep(EVENTS_RETRY_S)

    # -- images ----------------------------------------------------------------------------------

    async def PullImage(self, request: cri.PullImageRequest, context: Any) -> cri.PullImageResponse:
        """By the image's handler; else by the runtime of the pod it is pulled for (kubelet pulls
        after RunPodSandbox, so that sandbox is listed); else by the image name's rules."""
        client = None
        if not request.image.runtime_handler and request.HasField("sandbox_config"):
            client = await self.router.pod_owner(request.sandbox_config.metadata)
        if client is None:
            client = self.router.for_image(request.image)
        answer: cri.PullImageResponse = await client.call("PullImage", request, _timeout(context))
        pulled = cri.Image(id=answer.image_ref, repo_tags=[request.image.image])
        self.router.images_held(client.name, [pulled], whole=False)
        return answer

    async def ImageStatus(self, request: cri.ImageStatusRequest, context: Any) -> cri.ImageStatusResponse:
        client = self.router.for_image(request.image)
        return await client.call("ImageStatus", request, _timeout(context))  # type: ignore[no-any-return]

    async def RemoveImage(self, request: cri.RemoveImageRequest, context: Any) -> cri.RemoveImageResponse:
        client = self.router.for_image(request.image)
        return await client.call("RemoveImage", request, _timeout(context))  # type: ignore[no-any-return]

    async def ListImages(self, request: cri.ListImagesRequest, context: Any) -> cri.ListImagesResponse:
        answers = await self.router.each("ListImages", request, _timeout(context))
        for name, answer in answers.items():
            if not isinstance(answer, Exception):
                self.router.images_held(name, answer.images, whole=merge.unfiltered(request))
        return merge.images(implemented(answers))

    async def ImageFsInfo(self, request: cri.ImageFsInfoRequest, context: Any) -> cri.ImageFsInfoResponse:
        return merge.image_fs(implemented(await self.router.each("ImageFsInfo", request, _timeout(context))))
