"""What the CRI asks for: the specs of pods and containers, independent of the CRI wire format.

The CRI layer converts protobuf requests into these frozen dataclasses and back; nothing below it
sees protobuf. Field names follow the CRI so the mapping stays obvious. ``to_json``/``from_json`` give
the versioned metadata files (``sandbox.json``, ``container.json``), written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qmprt.cloudinit import hostname_from_name

METADATA_VERSION = 1


@dataclass(frozen=True)
class SandboxMetadata:
    name: str
    uid: str
    namespace: str
    attempt: int = 0


@dataclass(frozen=True)
class ContainerMetadata:
    name: str
    attempt: int = 0


@dataclass(frozen=True)
class PortMapping:
    protocol: str  # "TCP" | "UDP" | "SCTP"
    container_port: int
    host_port: int
    host_ip: str = ""


@dataclass(frozen=True)
class DNSSettings:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resources:
    """The Linux resources of a container (or a pod's overhead); 0 means unset, as in the CRI."""

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    oom_score_adj: int = 0
    memory_swap_limit_in_bytes: int = 0
    hugepage_limits: tuple[tuple[str, int], ...] = ()  # (page size, bytes)
    unified: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SandboxSpec:
    metadata: SandboxMetadata
    hostname: str = ""
    log_directory: str = ""
    dns: DNSSettings = field(default_factory=DNSSettings)
    port_mappings: tuple[PortMapping, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    overhead: Resources | None = None
    resources: Resources | None = None
    runtime_handler: str = ""
    sysctls: Mapping[str, str] = field(default_factory=dict)  # set in the guest at every boot

    @property
    def guest_hostname(self) -> str:
        """The hostname the client set, else one derived from the metadata name (critest and other
        clients send none; kubelet always does)."""
        return self.hostname or hostname_from_name(self.metadata.name)

    def to_json(self) -> dict[str, Any]:
        return {"version": METADATA_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> SandboxSpec:
        values = {key: value for key, value in document.items() if key != "version"}
        return cls(
            **{
                **values,
                "metadata": SandboxMetadata(**values["metadata"]),
                "dns": DNSSettings(**{k: tuple(v) for k, v in values["dns"].items()}),
                "port_mappings": tuple(PortMapping(**p) for p in values["port_mappings"]),
                "overhead": _resources(values.get("overhead")),
                "resources": _resources(values.get("resources")),
            }
        )


@dataclass(frozen=True)
class MountSpec:
    container_path: str
    host_path: str
    readonly: bool = False
    # As asked, and reported back in ContainerStatus; a virtiofs share shows what the host sees in
    # the directory, but nothing the guest mounts ever reaches the host.
    propagation: str = "PROPAGATION_PRIVATE"


@dataclass(frozen=True)
class DeviceSpec:
    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True)
class ContainerSpec:
    metadata: ContainerMetadata
    image: str  # the image reference as the client gave it
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    devices: tuple[DeviceSpec, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    log_path: str = ""
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    resources: Resources | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": METADATA_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ContainerSpec:
        values = {key: value for key, value in document.items() if key != "version"}
        return cls(
            **{
                **values,
                "metadata": ContainerMetadata(**values["metadata"]),
                "command": tuple(values["command"]),
                "args": tuple(values["args"]),
                "envs": tuple((k, v) for k, v in values["envs"]),
                "mounts": tuple(MountSpec(**m) for m in values["mounts"]),
                "devices": tuple(DeviceSpec(**d) for d in values["devices"]),
                "resources": _resources(values.get("resources")),
            }
        )


def metadata_bytes(labels: Mapping[str, str], annotations: Mapping[str, str]) -> int:
    """What an object's labels and annotations add to every list answer that carries it."""
    return sum(len(key.encode()) + len(value.encode()) for entries in (labels, annotations) for key, value in entries.items())


def _resources(document: Mapping[str, Any] | None) -> Resources | None:
    if document is None:
        return None
    return Resources(
        **{
            **document,
            "hugepage_limits": tuple((str(a), int(b)) for a, b in document.get("hugepage_limits", ())),
            "unified": tuple((str(a), str(b)) for a, b in document.get("unified", ())),
        }
    )
