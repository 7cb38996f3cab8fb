"""Sandboxes and containers as qmprt keeps them: metadata written once, status changed atomically.

Layout under the state root::

    pods/<sandbox-id>/sandbox.json              SandboxSpec (versioned), written once
    pods/<sandbox-id>/status.json               SandboxStatus
    pods/<sandbox-id>/<container-id>/container.json   ContainerSpec + image and VM choices, written once
    pods/<sandbox-id>/<container-id>/status.json      ContainerStatus
    pods/<sandbox-id>/<container-id>/…          overlay.qcow2, seed.iso and the VM's own files

A directory without its metadata file is a creation that crashed half-way; recovery deletes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmprt import state
from qmprt.cgroups import Cgroup
from qmprt.pod.network import PodNetwork
from qmprt.pod.model import ContainerSpec, SandboxSpec
from qmprt.pod.storage import ShareDaemons
from qmprt.pod.states import ContainerState, SandboxState, check_container_transition, check_sandbox_transition
from qmprt.pod.types import ContainerInfo, ContainerStatus, SandboxInfo, SandboxStatus
from qmprt.vm.console import CRILogWriter
from qmprt.vm.machine import VM

SANDBOX_FILE = "sandbox.json"
CONTAINER_FILE = "container.json"
STATUS_FILE = "status.json"


class Sandbox:
    def __init__(self, sandbox_id: str, directory: Path, spec: SandboxSpec, status: state.StatusFile[SandboxStatus]) -> None:
        self.id = sandbox_id
        self.directory = directory
        self.spec = spec
        self._status = status
        self.lock = asyncio.Lock()
        self.network: PodNetwork | None = None  # None: no CNI network (none configured, or torn down)

    @classmethod
    def create(cls, sandbox_id: str, directory: Path, spec: SandboxSpec, status: SandboxStatus) -> Sandbox:
        state.write_json_atomic(directory / SANDBOX_FILE, spec.to_json(), exclusive=True)
        status_file = state.StatusFile.create(
            directory / STATUS_FILE, status, SandboxStatus.to_json, SandboxStatus.from_json
        )
        return cls(sandbox_id, directory, spec, status_file)

    @classmethod
    def load(cls, directory: Path) -> Sandbox:
        spec = SandboxSpec.from_json(state.read_json(directory / SANDBOX_FILE))
        status = state.StatusFile.load(directory / STATUS_FILE, SandboxStatus.to_json, SandboxStatus.from_json)
        sandbox = cls(directory.name, directory, spec, status)
        sandbox.network = PodNetwork.load(directory)
        return sandbox

    @property
    def status(self) -> SandboxStatus:
        return self._status.value

    def set_state(self, new_state: SandboxState) -> None:
        def change(current: SandboxStatus) -> SandboxStatus:
            check_sandbox_transition(current.state, new_state)
            return dataclasses.replace(current, state=new_state)

        self._status.update(change)

    def info(self) -> SandboxInfo:
        return SandboxInfo(self.id, self.spec, self.status)


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
    volume_args: tuple[str, ...] = ()  # rendered disks: devices, data, RBD, iSCSI volumes
    shares: tuple[dict[str, Any], ...] = ()  # virtiofs shares (qmprt.volumes.VirtiofsShare fields)
    command_exit: str = "keep"  # "poweroff": the command is a job; its status is the exit code
    vm_uid: int | None = None  # the uid (and gid) its QEMU drops to; None: it stays root

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "spec": self.spec.to_json()}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ContainerRecord:
        return cls(
            **{
                **document,
                "spec": ContainerSpec.from_json(document["spec"]),
                "host_nodes": tuple(document.get("host_nodes", ())),
                "volume_args": tuple(document.get("volume_args", ())),
                "shares": tuple(document.get("shares", ())),
            }
        )


class Container:
    def __init__(self, container_id: str, directory: Path, record: ContainerRecord, status: state.StatusFile[ContainerStatus]) -> None:
        self.id = container_id
        self.directory = directory
        self.record = record
        self._status = status
        self.vm: VM | None = None
        self.cgroup: Cgroup | None = None  # the VM's cgroup, with the full interface (limits, stats)
        self.share_daemons: ShareDaemons | None = None  # virtiofsd of its directory mounts
        self.log_writer: CRILogWriter | None = None
        self.lock = asyncio.Lock()

    @classmethod
    def create(cls, container_id: str, directory: Path, record: ContainerRecord, status: ContainerStatus) -> Container:
        state.write_json_atomic(directory / CONTAINER_FILE, record.to_json(), exclusive=True)
        status_file = state.StatusFile.create(
            directory / STATUS_FILE, status, ContainerStatus.to_json, ContainerStatus.from_json
        )
        return cls(container_id, directory, record, status_file)

    @classmethod
    def load(cls, directory: Path) -> Container:
        record = ContainerRecord.from_json(state.read_json(directory / CONTAINER_FILE))
        status = state.StatusFile.load(directory / STATUS_FILE, ContainerStatus.to_json, ContainerStatus.from_json)
        return cls(directory.name, directory, record, status)

    @property
    def sandbox_id(self) -> str:
        return self.record.sandbox_id

    @property
    def spec(self) -> ContainerSpec:
        return self.record.spec

    @property
    def status(self) -> ContainerStatus:
        return self._status.value

    def update(self, new_state: ContainerState, **changes: Any) -> None:
        def change(current: ContainerStatus) -> ContainerStatus:
            check_container_transition(current.state, new_state)
            return dataclasses.replace(current, state=new_state, **changes)

        self._status.update(change)

    def sync_from_vm(self) -> None:
        """Copy the VM's exit into the container status (once; later calls change nothing)."""
        vm = self.vm
        if vm is None or self.status.state == ContainerState.EXITED:
            return
        vm_status = vm.status
        if vm_status.exit_code is None:
            return
        self.update(
            ContainerState.EXITED,
            started_at_ns=self.status.started_at_ns or vm_status.started_at_ns,
            finished_at_ns=vm_status.finished_at_ns,
            exit_code=vm_status.exit_code,
            reason=vm_status.reason,
            message=vm_status.message,
        )

    def info(self) -> ContainerInfo:
        return ContainerInfo(
            id=self.id,
            sandbox_id=self.sandbox_id,
            spec=self.spec,
            status=self.status,
            image_ref=self.record.image_digest,
            log_path=self.record.log_path,
        )
