"""What qmprt persists of sandboxes and containers: metadata written once, status changed atomically.

Layout under the state root::

    pods/<sandbox-id>/sandbox.json              SandboxSpec (versioned), written once
    pods/<sandbox-id>/status.json               SandboxStatus
    pods/<sandbox-id>/<container-id>/container.json   ContainerSpec + image and VM choices, written once
    pods/<sandbox-id>/<container-id>/status.json      ContainerStatus
    pods/<sandbox-id>/<container-id>/…          overlay.qcow2, seed.iso and the VM's own files

A directory without its metadata file is a creation that crashed half-way; recovery deletes it.
The objects that hold these records in memory are in ``qmprt.pod.live``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qmprt.pod.specs import ContainerSpec
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.volumes import BlockVolume, VirtiofsShare, volume_from_json, volume_to_json

SANDBOX_FILE = "sandbox.json"
CONTAINER_FILE = "container.json"
STATUS_FILE = "status.json"


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
class ContainerRecord:
    """What container.json holds: the spec and the choices made at creation."""

    spec: ContainerSpec
    sandbox_id: str
    image_digest: str
    image_path: str
    image_format: str
    log_path: str  # absolute, or "" when the sandbox has no log directory
    cgroup_path: str
    vcpus: int
    guest_memory_mib: int
    cgroup_memory_bytes: int | None
    host_nodes: tuple[int, ...] = ()  # cpuset_mems: guest RAM bound to these host NUMA nodes
    guest_numa_nodes: int = 1
    hugepage_page_kib: int | None = None
    seed_format: str = "nocloud"
    machine: str = "q35"
    kernel: str | None = None  # direct kernel boot: the image's attached kernel, initrd and cmdline
    initrd: str | None = None
    cmdline: str = ""
    volumes: tuple[BlockVolume, ...] = ()  # disks: devices, data, RBD, iSCSI volumes
    shares: tuple[VirtiofsShare, ...] = ()  # virtiofs shares
    # The disks of a record written before volumes were kept as such: their QEMU arguments, as given.
    volume_args: tuple[str, ...] = ()
    command_exit: str = "keep"  # "poweroff": the command is a job; its status is the exit code
    vm_uid: int | None = None  # the uid (and gid) its QEMU drops to; None: it stays root
    template: str = ""  # a clone: the id of the template whose files are linked into its directory

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self), "spec": self.spec.to_json(),
            "volumes": [volume_to_json(volume) for volume in self.volumes],
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ContainerRecord:
        return cls(
            **{
                **document,
                "spec": ContainerSpec.from_json(document["spec"]),
                "host_nodes": tuple(document.get("host_nodes", ())),
                "volumes": tuple(volume_from_json(volume) for volume in document.get("volumes", ())),
                "shares": tuple(VirtiofsShare(**share) for share in document.get("shares", ())),
                "volume_args": tuple(document.get("volume_args", ())),
            }
        )
