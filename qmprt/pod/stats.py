"""Usage of containers and sandboxes: CPU and memory from the VM's cgroup, disk from its overlay."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from qmprt.cgroups import CgroupStats
from qmprt.errors import QmprtError
from qmprt.pod.live import Container, Sandbox
from qmprt.pod.states import ContainerState
from qmprt.pod.views import ContainerStatsInfo, SandboxStatsInfo


def mountpoint_of(path: Path) -> str:
    current = path.resolve()
    while not os.path.ismount(current):
        current = current.parent
    return str(current)


def disk_usage(directory: Path) -> tuple[int, int]:
    used = inodes = 0
    for entry in directory.rglob("*"):
        with contextlib.suppress(OSError):
            used += entry.lstat().st_blocks * 512
            inodes += 1
    return used, inodes


def _cgroup_stats(container: Container) -> CgroupStats | None:
    if container.status.state != ContainerState.RUNNING or container.cgroup is None:
        return None
    try:
        return container.cgroup.stats()
    except QmprtError:
        return None


def container_stats(container: Container) -> ContainerStatsInfo:
    usage = _cgroup_stats(container)
    used, inodes = disk_usage(container.directory)
    return ContainerStatsInfo(
        container_id=container.id,
        sandbox_id=container.sandbox_id,
        spec=container.spec,
        timestamp_ns=usage.timestamp_ns if usage else time.time_ns(),
        cpu_usage_ns=usage.cpu_usage_ns if usage else None,
        memory_working_set_bytes=usage.memory_working_set_bytes if usage else None,
        memory_usage_bytes=usage.memory_usage_bytes if usage else None,
        memory_rss_bytes=usage.memory_rss_bytes if usage else None,
        writable_layer_bytes=used,
        writable_layer_inodes=inodes,
        writable_layer_mountpoint=mountpoint_of(container.directory),
    )


def _sum(values: Sequence[int | None]) -> int | None:
    present = [value for value in values if value is not None]
    return sum(present) if present else None


def sandbox_stats(sandbox: Sandbox, containers: Sequence[Container]) -> SandboxStatsInfo:
    per_container = tuple(container_stats(container) for container in containers)
    return SandboxStatsInfo(
        sandbox_id=sandbox.id,
        spec=sandbox.spec,
        timestamp_ns=time.time_ns(),
        cpu_usage_ns=_sum([c.cpu_usage_ns for c in per_container]),
        memory_working_set_bytes=_sum([c.memory_working_set_bytes for c in per_container]),
        memory_usage_bytes=_sum([c.memory_usage_bytes for c in per_container]),
        memory_rss_bytes=_sum([c.memory_rss_bytes for c in per_container]),
        containers=per_container,
    )
