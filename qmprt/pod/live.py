"""Sandboxes and containers as a running qmprt holds them: their records on disk (``qmprt.pod.records``)
with what lives only in memory: locks, the pod network, the VM, its cgroup, virtiofsd and log writer.

``create`` writes the metadata once and the first status; ``load`` reads them back (recovery).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from qmprt import state
from qmprt.cgroups import Cgroup
from qmprt.pod.network import PodNetwork
from qmprt.pod.records import (
    ContainerRecord,
    ContainerStatus,
    SandboxStatus,
    CONTAINER_FILE,
    SANDBOX_FILE,
    STATUS_FILE,
)
from qmprt.pod.specs import ContainerSpec, SandboxSpec
from qmprt.pod.states import ContainerState, SandboxState, check_container_transition, check_sandbox_transition
from qmprt.pod.storage import ShareDaemons
from qmprt.pod.views import ContainerInfo, SandboxInfo
from qmprt.vm.console import CRILogWriter
from qmprt.vm.machine import VM


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

    def sync_from_vm(self) -> bool:
        """Copy the VM's exit into the container status (once; later calls change nothing). True when
        this call recorded the exit."""
        vm = self.vm
        if vm is None or self.status.state == ContainerState.EXITED:
            return False
        vm_status = vm.status
        if vm_status.exit_code is None:
            return False
        self.update(
            ContainerState.EXITED,
            started_at_ns=self.status.started_at_ns or vm_status.started_at_ns,
            finished_at_ns=vm_status.finished_at_ns,
            exit_code=vm_status.exit_code,
            reason=vm_status.reason,
            message=vm_status.message,
        )
        return True

    def info(self) -> ContainerInfo:
        return ContainerInfo(
            id=self.id,
            sandbox_id=self.sandbox_id,
            spec=self.spec,
            status=self.status,
            image_ref=self.record.image_digest,
            log_path=self.record.log_path,
        )
