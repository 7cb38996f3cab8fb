"""Where each CRI call goes: the owner of its id, the runtime of its handler, or every downstream.

- RunPodSandbox: by ``runtime_handler`` (unknown → INVALID_ARGUMENT naming the handlers served).
- A call about a sandbox or container: to the downstream that owns the id (``Owners``). An id the map
  does not know is looked up in every downstream's list once; still unknown → NOT_FOUND, except
  the Stop and Remove calls, which the CRI makes idempotent (OK).
- Images: by ``ImageSpec.runtime_handler`` (PullImage also by its sandbox config's handler, read from
  the sandbox's owner), else by the downstreams' ``image_patterns``, else the default.
- Lists and stats: every downstream, merged. A downstream that is down contributes the sandboxes and
  containers of its last whole list (filtered here), so kubelet does not take its pods for gone;
  stats and images of a downstream that is down are left out. A downstream that does not implement
  a call (containerd 1.6 has no metrics or events) is left out of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as cri

from qmprt.errors import InvalidArgument, NotFound, Unavailable
from qmprt.proxy.config import ProxyConfig
from qmprt.proxy.downstream import DownstreamClient, Relayed
from qmprt.proxy.lastseen import LastSeen
from qmprt.proxy.owners import Owners, check_id

log = logging.getLogger(__name__)

SANDBOX_CALLS = frozenset(
    {"StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus", "PodSandboxStats", "PortForward",
     "UpdatePodSandboxResources", "CreateContainer"}
)
CONTAINER_CALLS = frozenset(
    {"StartContainer", "StopContainer", "RemoveContainer", "ContainerStatus", "UpdateContainerResources",
     "ReopenContainerLog", "ExecSync", "Exec", "Attach", "ContainerStats", "CheckpointContainer"}
)
MAX_IMAGE_NAMES = 65536
# The CRI makes these idempotent: an id nobody has is OK, not NOT_FOUND.
IDEMPOTENT = {
    "RemovePodSandbox": cri.RemovePodSandboxResponse, "RemoveContainer": cri.RemoveContainerResponse,
    "StopPodSandbox": cri.StopPodSandboxResponse, "StopContainer": cri.StopContainerResponse,
}
REMOVALS = frozenset({"RemovePodSandbox", "RemoveContainer"})


class Router:
    """The downstreams, the id map, and the choice of downstream for a call."""

    def __init__(self, config: ProxyConfig, clients: dict[str, DownstreamClient], owners: Owners) -> None:
        self.config = config
        self.clients = clients
        self.owners = owners
        self.default = clients[config.default]
        self._handlers = config.handler_owners()
        self.last_seen = LastSeen(owners.directory, tuple(clients))
        self._refresh_lock = asyncio.Lock()
        self._pods_started: dict[tuple[str, int], str] = {}  # (pod uid, attempt) → downstream, this run
        self._image_holders: dict[str, set[str]] = {}  # image id, tag or digest → downstreams holding it

    # -- choosing ------------------------------------------------------------------------------------

    def for_handler(self, handler: str) -> DownstreamClient:
        owner = self._handlers.get(handler)
        if owner is None:
            known = ", ".join(f"{name or '(default)'!s} → {ds}" for name, ds in sorted(self._handlers.items()))
            raise InvalidArgument(f"unknown runtime handler {handler[:80]!r}: this node serves {known}")
        return self.clients[owner]

    def for_image(self, spec: cri.ImageSpec) -> DownstreamClient:
        """By the spec's handler; else the one downstream known to hold the image (kubelet's ImageStatus
        and RemoveImage name no handler and no pod); else by the name patterns; else the default."""
        if spec.runtime_handler:
            return self.for_handler(spec.runtime_handler)
        holders = self._image_holders.get(spec.image, set())
        if len(holders) == 1:
            return self.clients[next(iter(holders))]
        for downstream in self.config.downstreams:
            if downstream.matches_image(spec.image):
                return self.clients[downstream.name]
        return self.default

    async def owner(self, kind: str, identifier: str, what: str) -> DownstreamClient | None:
        check_id(identifier, what)
        name = self.owners.owner(kind, identifier) or self.owners.by_prefix(kind, identifier)
        if name is None:
            await self.refresh()
            name = self.owners.owner(kind, identifier) or self.owners.by_prefix(kind, identifier)
        return self.clients[name] if name is not None else None

    def pod_started(self, metadata: cri.PodSandboxMetadata, downstream: str) -> None:
        if len(self._pods_started) >= MAX_IMAGE_NAMES:
            self._pods_started.clear()  # a cache: the lists answer for older pods
        self._pods_started[(metadata.uid, metadata.attempt)] = downstream

    def images_held(self, downstream: str, images: Iterable[cri.Image], whole: bool) -> None:
        """Remember what ``downstream`` holds (its ids, tags and digests); ``whole``: that is all it holds."""
        if whole:
            for holders in self._image_holders.values():
                holders.discard(downstream)
        for image in images:
            for name in (image.id, *image.repo_tags, *image.repo_digests):
                if len(self._image_holders) < MAX_IMAGE_NAMES or name in self._image_holders:
                    self._image_holders.setdefault(name, set()).add(downstream)

    async def pod_owner(self, metadata: cri.PodSandboxMetadata) -> DownstreamClient | None:
        """The downstream running the sandbox of ``metadata`` (its pod's uid and attempt)."""
        if not metadata.uid:
            return None
        started_here = self._pods_started.get((metadata.uid, metadata.attempt))
        if started_here is not None:
            return self.clients[started_here]
        for attempt in range(2):
            for name, item in self.last_seen.all_sandboxes():
                if item.metadata.uid == metadata.uid and item.metadata.attempt == metadata.attempt:
                    return self.clients[name]
            if attempt == 0:
                await self.refresh()
        return None

    async def refresh(self) -> None:
        """Every reachable downstream's whole lists, into the id map (once at a time)."""
        async with self._refresh_lock:
            await asyncio.gather(
                *(self.list_all(client, "ListPodSandbox") for client in self.clients.values()),
                *(self.list_all(client, "ListContainers") for client in self.clients.values()),
            )

    async def list_all(self, client: DownstreamClient, method: str) -> list[Any] | None:
        """``client``'s whole list for ``method``, remembered and learnt from; None when it is down."""
        request = cri.ListPodSandboxRequest() if method == "ListPodSandbox" else cri.ListContainersRequest()
        started = time.monotonic()
        try:
            answer = await client.call(method, request, self.config.probe_timeout_seconds)
        except (Unavailable, Relayed) as err:
            log.debug("%s of %s failed: %s", method, client.name, err)
            return None
        items = list(answer.items if method == "ListPodSandbox" else answer.containers)
        await self.remember(client.name, method, items, started)
        return items

    async def remember(self, downstream: str, method: str, items: list[Any], started: float) -> None:
        kind = "sandboxes" if method == "ListPodSandbox" else "containers"
        await self.last_seen.update(downstream, kind, items)
        await self.owners.learn(downstream, kind, [item.id for item in items], started)

    def last_list(self, downstream: str, method: str) -> list[Any]:
        return self.last_seen.items(downstream, "sandboxes" if method == "ListPodSandbox" else "containers")

    # -- fanning out --------------------------------------------------------------------------------

    async def each(
        self, method: str, request: Any, timeout: float | None, clients: Iterable[DownstreamClient] | None = None
    ) -> dict[str, Any]:
        """``method`` on every downstream at once: name → its answer or the exception it raised."""
        chosen = list(clients if clients is not None else self.clients.values())
        results = await asyncio.gather(
            *(client.call(method, request, timeout) for client in chosen), return_exceptions=True
        )
        answers: dict[str, Any] = {}
        for client, result in zip(chosen, results):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            answers[client.name] = result
        return answers


def implemented(answers: dict[str, Any]) -> list[Any]:
    """The answers of a fan-out, leaving out downstreams that are down or lack the call; if none
    answered, the first error (UNIMPLEMENTED if all lack it) is raised."""
    good = [answer for answer in answers.values() if not isinstance(answer, Exception)]
    if good or not answers:
        return good
    errors = list(answers.values())
    for error in errors:
        if not (isinstance(error, Relayed) and error.code == grpc.StatusCode.UNIMPLEMENTED):
            raise error
    raise errors[0]


def not_found(kind: str, identifier: str) -> NotFound:
    noun = "sandbox" if kind == "sandboxes" else "container"
    return NotFound(f"no runtime behind this proxy has a {noun} {identifier[:80]!r}")
