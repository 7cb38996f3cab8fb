"""What the CRI layer needs from the layers below it, as Protocols.

The servicers are written against ``RuntimeBackend``, not against ``qmprt.pod.runtime.Runtime``
itself, so the unit tests drive the real gRPC server over a fake runtime (``tests/unit/cri/fake.py``)
while the real ``Runtime`` satisfies it structurally (mypy checks that where ``serve`` opens it). The
image store is reached through its own Protocol, ``qmprt.image.Images``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from qmprt.config import Config
from qmprt.image import Images
from qmprt.pod.events import Subscription
from qmprt.pod.metrics import SandboxMetricsInfo
from qmprt.pod.specs import ContainerSpec, Resources, SandboxSpec
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.pod.streams import StreamRequest
from qmprt.pod.views import ContainerInfo, ContainerStatsInfo, RuntimeHealth, SandboxInfo, SandboxStatsInfo
from qmprt.vm.agent import ExecResult


class RuntimeBackend(Protocol):
    """The pod layer's ``Runtime``, as far as the CRI servicers use it."""

    @property
    def config(self) -> Config: ...

    @property
    def images(self) -> Images: ...

    async def close(self) -> None: ...

    def health(self) -> RuntimeHealth: ...

    def cgroup_driver_name(self) -> str: ...

    def update_runtime_config(self, pod_cidr: str) -> None: ...

    def subscribe(self) -> Subscription: ...

    def end_event_streams(self) -> None: ...

    async def run_sandbox(self, spec: SandboxSpec) -> str: ...

    async def stop_sandbox(self, sandbox_id: str) -> None: ...

    async def remove_sandbox(self, sandbox_id: str) -> None: ...

    def sandbox(self, sandbox_id: str) -> SandboxInfo: ...

    def sandbox_network(self, sandbox_id: str) -> dict[str, Any] | None: ...

    def list_sandboxes(
        self, *, id: str = "", state: SandboxState | None = None, labels: Mapping[str, str] = ...
    ) -> list[SandboxInfo]: ...

    async def create_container(self, sandbox_id: str, spec: ContainerSpec) -> str: ...

    async def start_container(self, container_id: str) -> None: ...

    async def stop_container(self, container_id: str, timeout_s: int) -> None: ...

    async def remove_container(self, container_id: str) -> None: ...

    def container(self, container_id: str) -> ContainerInfo: ...

    def list_containers(
        self,
        *,
        id: str = "",
        state: ContainerState | None = None,
        sandbox_id: str = "",
        labels: Mapping[str, str] = ...,
    ) -> list[ContainerInfo]: ...

    async def exec_sync(self, container_id: str, argv: Sequence[str], timeout_s: int) -> ExecResult: ...

    async def reopen_log(self, container_id: str) -> None: ...

    async def list_sandbox_metrics(self) -> list[SandboxMetricsInfo]: ...

    async def update_resources(self, container_id: str, resources: Resources) -> None: ...

    async def container_stats(self, container_id: str) -> ContainerStatsInfo: ...

    async def list_container_stats(
        self, *, id: str = "", sandbox_id: str = "", labels: Mapping[str, str] = ...
    ) -> list[ContainerStatsInfo]: ...

    async def sandbox_stats(self, sandbox_id: str) -> SandboxStatsInfo: ...

    async def list_sandbox_stats(self, *, id: str = "", labels: Mapping[str, str] = ...) -> list[SandboxStatsInfo]: ...

    def image_in_use(self, digest: str) -> bool: ...


class StreamURLs(Protocol):
    """The streaming server, as Exec, Attach and PortForward use it: a request in, its URL out."""

    def url(self, request: StreamRequest) -> str: ...


class StreamingService(StreamURLs, Protocol):
    """The streaming server as ``serve`` runs it beside the CRI socket."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Handlers:
    """Base of the per-area servicer mixins that ``server.RuntimeService`` combines; ``streams`` is
    None when no streaming server runs (Exec, Attach and PortForward then say so)."""

    def __init__(self, runtime: RuntimeBackend, streams: StreamURLs | None = None) -> None:
        self.runtime = runtime
        self.streams = streams
