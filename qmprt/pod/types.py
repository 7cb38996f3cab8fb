"""What the pod layer returns: status and stats of sandboxes and containers (CRI-independent)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qmprt.pod.model import ContainerSpec, SandboxSpec
from qmprt.pod.states import ContainerState, SandboxState


@dataclass(frozen=True)
class SandboxStatus:
    state: SandboxState
    created_at_ns: int
    netns_path: str = ""
    ip: str = ""
    additional_ips: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "state": self.state.value}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> SandboxStatus:
        return cls(
            **{
                **document,
                "state": SandboxState(document["state"]),
                "additional_ips": tuple(document.get("additional_ips", ())),
            }
        )


@dataclass(frozen=True)
class SandboxInfo:
    id: str
    spec: SandboxSpec
    status: SandboxStatus


@dataclass(frozen=True)
class ContainerStatus:
    state: ContainerState
    created_at_ns: int
    started_at_ns: int = 0
    finished_at_ns: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "state": self.state.value}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ContainerStatus:
        return cls(**{**document, "state": ContainerState(document["state"])})


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
