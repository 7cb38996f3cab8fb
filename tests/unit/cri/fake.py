"""An in-memory Runtime with the pod layer's interface, for driving the real gRPC server fast.

It keeps the pod layer's rules that the CRI layer relies on (prefix ids, NotFound on lookups,
idempotent stop/remove, one running container per sandbox, images must be present) and nothing else.
``fail_next[method] = exc`` makes the next call of ``method`` raise ``exc``; ``calls`` records every
call with its arguments so tests can check what the CRI layer passed down. Lifecycle events go
through the real ``qmprt.pod.events.EventBus`` (``events``), published where the pod layer publishes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qmprt.config import Config
from qmprt.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from qmprt.image import FsUsage, ImageRecord
from qmprt.pod.events import ContainerEvent, EventBus, EventType, Subscription
from qmprt.pod.metrics import ContainerMetricsInfo, MetricSample, SandboxMetricsInfo
from qmprt.pod.specs import ContainerSpec, Resources, SandboxSpec
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.pod.views import ContainerInfo, ContainerStatsInfo, RuntimeHealth, SandboxInfo, SandboxStatsInfo
from qmprt.pod.records import ContainerStatus, SandboxStatus
from qmprt.vm.agent import ExecResult


class ImageRecordStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.records: dict[str, ImageRecord] = {}
        self.pull_delay = 0.0
        self.pulls_cancelled = 0
        self.pulling: dict[str, tuple[int, int | None]] = {}

    def add(self, name: str, size: int = 1 << 20) -> ImageRecord:
        digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        existing = self.records.get(digest)
        names = tuple(dict.fromkeys((*(existing.names if existing else ()), name)))
        record = ImageRecord(digest, str(self.root / digest), "qcow2", size, size * 4, names, time.time_ns())
        self.records[digest] = record
        return record

    async def pull(self, name: str, auth: Any, progress: Any = None) -> ImageRecord:
        if name.startswith("missing"):
            raise NotFound(f"image {name!r}: the server answered 404")
        self.pulling[name] = (0, 1 << 20)
        try:
            await asyncio.sleep(self.pull_delay)
        except asyncio.CancelledError:
            self.pulls_cancelled += 1
            raise
        finally:
            del self.pulling[name]
        self.last_auth = auth
        return self.add(name)

    def pull_progress(self, name: str) -> tuple[int, int | None] | None:
        return self.pulling.get(name)

    def resolve(self, ref: str) -> ImageRecord | None:
        for record in self.records.values():
            if ref in record.names or ref == record.digest:
                return record
        return None

    def list(self) -> list[ImageRecord]:
        return list(self.records.values())

    def remove(self, ref: str, in_use: Callable[[str], bool]) -> None:
        record = self.resolve(ref)
        if record is None:
            return
        if in_use(record.digest):
            raise FailedPrecondition(f"image {ref} is used by a container")
        del self.records[record.digest]

    def fs_usage(self) -> FsUsage:
        used = sum(record.size_bytes for record in self.records.values())
        return FsUsage(str(self.root), used, len(self.records) + 1, time.time_ns())


class FakeRuntime:
    def __init__(self, config: Config, root: Path) -> None:
        self.config = config
        self.images = ImageRecordStore(root / "images")
        self.root = root
        self.sandboxes: dict[str, SandboxInfo] = {}
        self.containers: dict[str, ContainerInfo] = {}
        self.fail_next: dict[str, BaseException] = {}
        self.calls: list[tuple[str, Any]] = []
        self.health_value = RuntimeHealth(
            True, "", "", False, "NetworkPluginNotReady", "no CNI configuration in /etc/cni/net.d"
        )
        self.pod_cidr = ""
        self.exec_results: dict[tuple[str, ...], ExecResult] = {}
        self.closed = False
        self.events = EventBus()

    def _enter(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))
        error = self.fail_next.pop(method, None)
        if error is not None:
            raise error

    @staticmethod
    def _lookup(objects: Mapping[str, Any], object_id: str, kind: str) -> Any:
        if object_id in objects:
            return objects[object_id]
        matches = [key for key in objects if key.startswith(object_id)]
        if len(matches) == 1:
            return objects[matches[0]]
        if not matches:
            raise NotFound(f"{kind} {object_id!r} does not exist")
        raise InvalidArgument(f"{kind} id prefix {object_id!r} is ambiguous")

    async def close(self) -> None:
        self.closed = True
        self.events.close()

    def subscribe(self) -> Subscription:
        self._enter("subscribe")
        return self.events.subscribe()

    def end_event_streams(self) -> None:
        self.events.close()

    def _publish(self, kind: EventType, object_id: str, sandbox_id: str) -> None:
        containers = tuple(c for c in self.containers.values() if c.sandbox_id == sandbox_id)
        self.events.publish(ContainerEvent(object_id, kind, time.time_ns(), self.sandboxes[sandbox_id], containers))

    def health(self) -> RuntimeHealth:
        self._enter("health")
        return self.health_value

    def cgroup_driver_name(self) -> str:
        return self.config.cgroups.driver

    def update_runtime_config(self, pod_cidr: str) -> None:
        self._enter("update_runtime_config", pod_cidr)
        self.pod_cidr = pod_cidr

    # -- sandboxes ----------------------------------------------------------------------------------

    async def run_sandbox(self, spec: SandboxSpec) -> str:
        self._enter("run_sandbox", spec)
        if spec.runtime_handler not in ("", *self.config.runtime.handlers):
            raise InvalidArgument(f"unknown runtime handler {spec.runtime_handler!r}")
        for info in self.sandboxes.values():
            if info.spec.metadata == spec.metadata:
                raise AlreadyExists(f"sandbox {spec.metadata.name} exists: {info.id}")
        sandbox_id = secrets.token_hex(32)
        status = SandboxStatus(SandboxState.READY, time.time_ns(), ip="10.88.0.7", additional_ips=("fd00::7",))
        self.sandboxes[sandbox_id] = SandboxInfo(sandbox_id, spec, status)
        self._publish(EventType.CREATED, sandbox_id, sandbox_id)
        self._publish(EventType.STARTED, sandbox_id, sandbox_id)
        return sandbox_id

    async def stop_sandbox(self, sandbox_id: str) -> None:
        self._enter("stop_sandbox", sandbox_id)
        try:
            info = self._lookup(self.sandboxes, sandbox_id, "sandbox")
        except NotFound:
            return
        for container in list(self.containers.values()):
            if container.sandbox_id == info.id:
                await self.stop_container(container.id, 0)
        if info.status.state == SandboxState.READY:
            self.sandboxes[info.id] = dataclasses.replace(
                info, status=dataclasses.replace(info.status, state=SandboxState.NOTREADY)
            )
            self._publish(EventType.STOPPED, info.id, info.id)

    async def remove_sandbox(self, sandbox_id: str) -> None:
        self._enter("remove_sandbox", sandbox_id)
        try:
            info = self._lookup(self.sandboxes, sandbox_id, "sandbox")
        except NotFound:
            return
        await self.stop_sandbox(info.id)
        for container in list(self.containers.values()):
            if container.sandbox_id == info.id:
                await self.remove_container(container.id)
        self._publish(EventType.DELETED, info.id, info.id)
        del self.sandboxes[info.id]

    def sandbox(self, sandbox_id: str) -> SandboxInfo:
        self._enter("sandbox", sandbox_id)
        info: SandboxInfo = self._lookup(self.sandboxes, sandbox_id, "sandbox")
        return info

    def sandbox_network(self, sandbox_id: str) -> dict[str, Any] | None:
        self._lookup(self.sandboxes, sandbox_id, "sandbox")
        return None

    def list_sandboxes(
        self, *, id: str = "", state: SandboxState | None = None, labels: Mapping[str, str] | None = None
    ) -> list[SandboxInfo]:
        self._enter("list_sandboxes", id, state, labels)
        return [
            info
            for info in self.sandboxes.values()
            if info.id.startswith(id)
            and (state is None or info.status.state == state)
            and all(info.spec.labels.get(key) == value for key, value in (labels or {}).items())
        ]

    # -- containers ---------------------------------------------------------------------------------

    async def create_container(self, sandbox_id: str, spec: ContainerSpec) -> str:
        self._enter("create_container", sandbox_id, spec)
        sandbox: SandboxInfo = self._lookup(self.sandboxes, sandbox_id, "sandbox")
        if sandbox.status.state != SandboxState.READY:
            raise FailedPrecondition(f"sandbox {sandbox.id[:12]} is not ready")
        image = self.images.resolve(spec.image)
        if image is None:
            raise NotFound(f"image {spec.image!r} is not present on this node: pull it first")
        container_id = secrets.token_hex(32)
        log_path = str(Path(sandbox.spec.log_directory) / spec.log_path) if spec.log_path else ""
        self.containers[container_id] = ContainerInfo(
            container_id,
            sandbox.id,
            spec,
            ContainerStatus(ContainerState.CREATED, time.time_ns()),
            image.digest,
            log_path,
        )
        self._publish(EventType.CREATED, container_id, sandbox.id)
        return container_id

    def _set_status(self, info: ContainerInfo, **changes: Any) -> None:
        self.containers[info.id] = dataclasses.replace(info, status=dataclasses.replace(info.status, **changes))

    async def start_container(self, container_id: str) -> None:
        self._enter("start_container", container_id)
        info: ContainerInfo = self._lookup(self.containers, container_id, "container")
        if info.status.state != ContainerState.CREATED:
            raise FailedPrecondition(f"container {info.id[:12]} is {info.status.state.value}, not created")
        for other in self.containers.values():
            if other.sandbox_id == info.sandbox_id and other.status.state == ContainerState.RUNNING:
                raise FailedPrecondition(f"sandbox {info.sandbox_id[:12]} already runs container {other.id[:12]}")
        self._set_status(info, state=ContainerState.RUNNING, started_at_ns=time.time_ns())
        self._publish(EventType.STARTED, info.id, info.sandbox_id)

    async def stop_container(self, container_id: str, timeout_s: int) -> None:
        self._enter("stop_container", container_id, timeout_s)
        try:
            info: ContainerInfo = self._lookup(self.containers, container_id, "container")
        except NotFound:
            return
        if info.status.state == ContainerState.RUNNING:
            self._set_status(
                info, state=ContainerState.EXITED, finished_at_ns=time.time_ns(), exit_code=0, reason="Completed"
            )
            self._publish(EventType.STOPPED, info.id, info.sandbox_id)

    async def remove_container(self, container_id: str) -> None:
        self._enter("remove_container", container_id)
        try:
            info: ContainerInfo = self._lookup(self.containers, container_id, "container")
        except NotFound:
            return
        del self.containers[info.id]
        self._publish(EventType.DELETED, info.id, info.sandbox_id)

    def container(self, container_id: str) -> ContainerInfo:
        self._enter("container", container_id)
        info: ContainerInfo = self._lookup(self.containers, container_id, "container")
        return info

    def list_containers(
        self,
        *,
        id: str = "",
        state: ContainerState | None = None,
        sandbox_id: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> list[ContainerInfo]:
        self._enter("list_containers", id, state, sandbox_id, labels)
        return [
            info
            for info in self.containers.values()
            if info.id.startswith(id)
            and info.sandbox_id.startswith(sandbox_id)
            and (state is None or info.status.state == state)
            and all(info.spec.labels.get(key) == value for key, value in (labels or {}).items())
        ]

    async def exec_sync(self, container_id: str, argv: Sequence[str], timeout_s: int) -> ExecResult:
        self._enter("exec_sync", container_id, tuple(argv), timeout_s)
        info: ContainerInfo = self._lookup(self.containers, container_id, "container")
        if info.status.state != ContainerState.RUNNING:
            raise FailedPrecondition(f"container {info.id[:12]} is not running")
        return self.exec_results.get(tuple(argv), ExecResult(0, b"", b""))

    async def reopen_log(self, container_id: str) -> None:
        self._enter("reopen_log", container_id)
        self._lookup(self.containers, container_id, "container")

    async def update_resources(self, container_id: str, resources: Resources) -> None:
        self._enter("update_resources", container_id, resources)
        info: ContainerInfo = self._lookup(self.containers, container_id, "container")
        self.containers[info.id] = dataclasses.replace(info, spec=dataclasses.replace(info.spec, resources=resources))

    # -- stats --------------------------------------------------------------------------------------

    async def list_sandbox_metrics(self) -> list[SandboxMetricsInfo]:
        """One network sample per pod and one CPU sample per running container, with made-up values."""
        self._enter("list_sandbox_metrics")
        found = []
        for sandbox in self.sandboxes.values():
            base = ("POD", sandbox.id, "", sandbox.spec.metadata.namespace, sandbox.spec.metadata.name)
            pod_sample = MetricSample("container_network_receive_bytes_total", "counter", (*base, "eth0"), 1, 1)
            containers = tuple(
                ContainerMetricsInfo(
                    c.id,
                    (MetricSample("container_cpu_usage_seconds_total", "counter", (c.spec.metadata.name, c.id, c.spec.image, *base[3:]), 2, 1),),
                )
                for c in self.containers.values()
                if c.sandbox_id == sandbox.id and c.status.state == ContainerState.RUNNING
            )
            found.append(SandboxMetricsInfo(sandbox.id, (pod_sample,), containers))
        return found

    def _stats(self, info: ContainerInfo) -> ContainerStatsInfo:
        return ContainerStatsInfo(
            container_id=info.id,
            sandbox_id=info.sandbox_id,
            spec=info.spec,
            timestamp_ns=time.time_ns(),
            cpu_usage_ns=123_000_000,
            memory_working_set_bytes=64 << 20,
            memory_usage_bytes=80 << 20,
            memory_rss_bytes=None,
            writable_layer_bytes=4096,
            writable_layer_inodes=1,
            writable_layer_mountpoint=str(self.root / "pods"),
        )

    async def container_stats(self, container_id: str) -> ContainerStatsInfo:
        self._enter("container_stats", container_id)
        return self._stats(self._lookup(self.containers, container_id, "container"))

    async def list_container_stats(
        self, *, id: str = "", sandbox_id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[ContainerStatsInfo]:
        self._enter("list_container_stats", id, sandbox_id, labels)
        return [self._stats(info) for info in self.list_containers(id=id, sandbox_id=sandbox_id, labels=labels)]

    def _sandbox_stats(self, info: SandboxInfo) -> SandboxStatsInfo:
        containers = tuple(self._stats(c) for c in self.containers.values() if c.sandbox_id == info.id)
        return SandboxStatsInfo(
            sandbox_id=info.id,
            spec=info.spec,
            timestamp_ns=time.time_ns(),
            cpu_usage_ns=sum(c.cpu_usage_ns or 0 for c in containers),
            memory_working_set_bytes=sum(c.memory_working_set_bytes or 0 for c in containers),
            memory_usage_bytes=None,
            memory_rss_bytes=None,
            containers=containers,
        )

    async def sandbox_stats(self, sandbox_id: str) -> SandboxStatsInfo:
        self._enter("sandbox_stats", sandbox_id)
        return self._sandbox_stats(self._lookup(self.sandboxes, sandbox_id, "sandbox"))

    async def list_sandbox_stats(self, *, id: str = "", labels: Mapping[str, str] | None = None) -> list[SandboxStatsInfo]:
        self._enter("list_sandbox_stats", id, labels)
        return [self._sandbox_stats(info) for info in self.list_sandboxes(id=id, labels=labels)]

    def image_in_use(self, digest: str) -> bool:
        return any(info.image_ref == digest for info in self.containers.values())
