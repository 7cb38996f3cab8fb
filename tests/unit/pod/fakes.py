"""Fakes and builders for pod-layer unit tests: records on disk in a tmp dir, no QEMU, netns or CNI."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from qmprt import state
from qmprt.pod.specs import ContainerMetadata, ContainerSpec, SandboxMetadata, SandboxSpec
from qmprt.pod.live import Container, Sandbox
from qmprt.pod.records import ContainerRecord
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.pod.records import ContainerStatus, SandboxStatus


def sandbox_spec(name: str = "web", **changes: Any) -> SandboxSpec:
    return SandboxSpec(metadata=SandboxMetadata(name, f"uid-{name}", "default"), **changes)


def container_spec(name: str = "app", **changes: Any) -> ContainerSpec:
    return ContainerSpec(**{"metadata": ContainerMetadata(name), "image": "tiny", **changes})


def record(spec: ContainerSpec, sandbox_id: str, **changes: Any) -> ContainerRecord:
    values: dict[str, Any] = dict(
        spec=spec, sandbox_id=sandbox_id, image_digest="sha256:" + "0" * 64, image_path="/images/tiny",
        image_format="qcow2", log_path="", cgroup_path=f"qmprt/{sandbox_id[:16]}/qmprt-x", vcpus=1,
        guest_memory_mib=128, cgroup_memory_bytes=None,
    )
    return ContainerRecord(**{**values, **changes})


def make_sandbox(pods_root: Path, spec: SandboxSpec | None = None, sandbox_id: str | None = None) -> Sandbox:
    sandbox_id = sandbox_id or secrets.token_hex(32)
    directory = state.ensure_private_dir(pods_root / sandbox_id)
    return Sandbox.create(sandbox_id, directory, spec or sandbox_spec(), SandboxStatus(SandboxState.READY, time.time_ns()))


def make_container(
    sandbox: Sandbox, spec: ContainerSpec | None = None, container_id: str | None = None, **record_changes: Any
) -> Container:
    container_id = container_id or secrets.token_hex(32)
    directory = state.ensure_private_dir(sandbox.directory / container_id)
    return Container.create(
        container_id, directory, record(spec or container_spec(), sandbox.id, **record_changes),
        ContainerStatus(ContainerState.CREATED, time.time_ns()),
    )


class FakeCgroup:
    def __init__(self, path: str) -> None:
        self.path = path
        self.killed = self.deleted = False

    def kill(self) -> None:
        self.killed = True

    def delete(self) -> None:
        self.deleted = True

    def oom_kill_count(self) -> int:
        return 0


class FakeCgroupDriver:
    """Cgroups that exist when listed in ``paths``."""

    def __init__(self, *paths: str) -> None:
        self.paths = set(paths)
        self.opened: dict[str, FakeCgroup] = {}

    def exists(self, path: str) -> bool:
        return path in self.paths

    def open(self, path: str) -> FakeCgroup:
        return self.opened.setdefault(path, FakeCgroup(path))

    def create(self, path: str) -> FakeCgroup:
        self.paths.add(path)
        return self.open(path)


class FakeNetworks:
    """What recovery asks of the pod networks: a CNI DEL from the cache, a check of the wiring."""

    def __init__(self, broken: list[str] | None = None) -> None:
        self.forgotten: list[str] = []
        self.readopted: list[str] = []
        self.broken = broken or []

    async def forget_half_created(self, sandbox_id: str, netns_path: str) -> None:
        self.forgotten.append(sandbox_id)

    async def readopt(self, sandbox_id: str, sandbox: SandboxSpec, network: object) -> list[str]:
        self.readopted.append(sandbox_id)
        return self.broken
