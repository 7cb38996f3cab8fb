"""What the pod layer answers: status and stats of sandboxes and containers, and its health (CRI-independent).

The statuses inside them are the persisted ones (``qmprt.pod.records``)."""

from __future__ import annotations

from dataclasses import dataclass

from qmprt.pod.records import ContainerStatus, SandboxStatus
from qmprt.pod.specs import ContainerSpec, SandboxSpec


@dataclass(frozen=True)
class SandboxInfo:
    id: str
    spec: SandboxSpec
    status: SandboxStatus


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    sandbox_id: str
    spec: ContainerSpec
    status: ContainerStatus
    image_ref: str  # the digest the container runs ("sha256:…")
    log_path: str  # absolute: the sandbox's log_directory joined with the container's log_path


@dataclass(frozen=True)
class ContainerStatsInfo:
    container_id: str
    sandbox_id: str
    spec: ContainerSpec
    timestamp_ns: int
    cpu_usage_ns: int | None
    memory_working_set_bytes: int | None
    memory_usage_bytes: int | None
    memory_rss_bytes: int | None
    writable_layer_bytes: int
    writable_layer_inodes: int
    writable_layer_mountpoint: str


@dataclass(frozen=True)
class SandboxStatsInfo:
    sandbox_id: str
    spec: SandboxSpec
    timestamp_ns: int
    cpu_usage_ns: int | None
    memory_working_set_bytes: int | None
    memory_usage_bytes: int | None
    memory_rss_bytes: int | None
    containers: tuple[ContainerStatsInfo, ...]


@dataclass(frozen=True)
class RuntimeHealth:
    runtime_ready: bool
    runtime_reason: str
    runtime_message: str
    network_ready: bool
    network_reason: str
    network_message: str
