"""Every counter of one cgroup that cAdvisor-style metrics report, read from v1 or v2 files.

``read_v1`` and ``read_v2`` take the directories a cgroup lives in and return ``CgroupCounters``
in one set of units (nanoseconds, bytes, counts), whatever the hierarchy. A controller or file the
kernel does not offer leaves its fields ``None``: the caller reports what exists and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from qmprt.cgroups import files

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # cpuacct.stat counts USER_HZ ticks
_V1_UNLIMITED_THRESHOLD = 1 << 62


@dataclasses.dataclass(frozen=True)
class DeviceIO:
    major: int
    minor: int
    read_bytes: int = 0
    write_bytes: int = 0
    reads: int = 0
    writes: int = 0


@dataclasses.dataclass(frozen=True)
class CgroupCounters:
    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_ns: int | None = None
    memory_usage_bytes: int | None = None
    memory_max_usage_bytes: int | None = None
    memory_failcnt: int | None = None
    memory_cache_bytes: int | None = None
    memory_rss_bytes: int | None = None
    memory_mapped_file_bytes: int | None = None
    memory_swap_bytes: int | None = None
    memory_kernel_bytes: int | None = None
    memory_working_set_bytes: int | None = None
    memory_pgfault: int | None = None
    memory_pgmajfault: int | None = None
    oom_kills: int | None = None
    pids_current: int | None = None
    pids_max: int | None = None  # None: unlimited or unknown
    io: tuple[DeviceIO, ...] = ()


def _key_values(file_path: str) -> dict[str, int] | None:
    return files.read_key_values(file_path) if os.path.exists(file_path) else None


def _int(file_path: str) -> int | None:
    return files.read_int(file_path) if os.path.exists(file_path) else None


def _pids_max(file_path: str) -> int | None:
    if not os.path.exists(file_path):
        return None
    value = files.read_limit(file_path)
    return None if value < 0 or value >= _V1_UNLIMITED_THRESHOLD else value


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    if usage is None:
        return None
    return max(usage - (inactive_file or 0), 0)


def read_v1(directories: Mapping[str, str]) -> CgroupCounters:
    """From a v1 cgroup's directory per controller (``cpu``, ``cpuacct``, ``memory``, ``pids``, ``blkio``)."""

    def path(controller: str, name: str) -> str:
        directory = directories.get(controller)
        return os.path.join(directory, name) if directory else os.path.join("/nonexistent", name)

    cpuacct = _key_values(path("cpuacct", "cpuacct.stat")) or {}
    cpu_stat = _key_values(path("cpu", "cpu.stat")) or {}
    memory = _key_values(path("memory", "memory.stat")) or {}
    usage = _int(path("memory", "memory.usage_in_bytes"))
    oom_control = _key_values(path("memory", "memory.oom_control")) or {}
    swap_total = _int(path("memory", "memory.memsw.usage_in_bytes"))
    tick_ns = 1_000_000_000 // _CLOCK_TICKS
    return CgroupCounters(
        cpu_usage_ns=_int(path("cpuacct", "cpuacct.usage")),
        cpu_user_ns=cpuacct["user"] * tick_ns if "user" in cpuacct else None,
        cpu_system_ns=cpuacct["system"] * tick_ns if "system" in cpuacct else None,
        cpu_periods=cpu_stat.get("nr_periods"),
        cpu_throttled_periods=cpu_stat.get("nr_throttled"),
        cpu_throttled_ns=cpu_stat.get("throttled_time"),
        memory_usage_bytes=usage,
        memory_max_usage_bytes=_int(path("memory", "memory.max_usage_in_bytes")),
        memory_failcnt=_int(path("memory", "memory.failcnt")),
        memory_cache_bytes=memory.get("total_cache", memory.get("cache")),
        memory_rss_bytes=memory.get("total_rss", memory.get("rss")),
        memory_mapped_file_bytes=memory.get("total_mapped_file", memory.get("mapped_file")),
        memory_swap_bytes=max(swap_total - usage, 0) if swap_total is not None and usage is not None else memory.get("total_swap"),
        memory_kernel_bytes=_int(path("memory", "memory.kmem.usage_in_bytes")),
        memory_working_set_bytes=_working_set(usage, memory.get("total_inactive_file", memory.get("inactive_file"))),
        memory_pgfault=memory.get("total_pgfault", memory.get("pgfault")),
        memory_pgmajfault=memory.get("total_pgmajfault", memory.get("pgmajfault")),
        oom_kills=oom_control.get("oom_kill"),
        pids_current=_int(path("pids", "pids.current")),
        pids_max=_pids_max(path("pids", "pids.max")),
        io=_v1_io(path("blkio", "blkio.throttle.io_service_bytes"), path("blkio", "blkio.throttle.io_serviced")),
    )


def _v1_io(bytes_file: str, serviced_file: str) -> tuple[DeviceIO, ...]:
    """``MAJ:MIN Read N`` / ``MAJ:MIN Write N`` lines of the two blkio.throttle files, per device."""
    devices: dict[tuple[int, int], dict[str, int]] = {}
    for file_path, suffix in ((bytes_file, "_bytes"), (serviced_file, "s")):
        text = files.read_optional_text(file_path) or ""
        for line in text.splitlines():
            fields = line.split()
            if len(fields) != 3 or fields[1] not in ("Read", "Write") or ":" not in fields[0]:
                continue
            major, _, minor = fields[0].partition(":")
            if not (major.isdigit() and minor.isdigit() and fields[2].isdigit()):
                continue
            key = f"{fields[1].lower()}{suffix}".replace("reads_bytes", "read_bytes")
            devices.setdefault((int(major), int(minor)), {})[key] = int(fields[2])
    return tuple(DeviceIO(major, minor, **values) for (major, minor), values in sorted(devices.items()))


def read_v2(directory: str) -> CgroupCounters:
    """From a v2 cgroup's directory."""

    def path(name: str) -> str:
        return os.path.join(directory, name)

    cpu_stat = _key_values(path("cpu.stat")) or {}
    memory = _key_values(path("memory.stat")) or {}
    events = _key_values(path("memory.events")) or {}
    usage = _int(path("memory.current"))
    kernel = memory.get("kernel")
    if kernel is None and "kernel_stack" in memory:
        kernel = memory.get("kernel_stack", 0) + memory.get("slab", 0) + memory.get("sock", 0)
    return CgroupCounters(
        cpu_usage_ns=cpu_stat["usage_usec"] * 1000 if "usage_usec" in cpu_stat else None,
        cpu_user_ns=cpu_stat["user_usec"] * 1000 if "user_usec" in cpu_stat else None,
        cpu_system_ns=cpu_stat["system_usec"] * 1000 if "system_usec" in cpu_stat else None,
        cpu_periods=cpu_stat.get("nr_periods"),
        cpu_throttled_periods=cpu_stat.get("nr_throttled"),
        cpu_throttled_ns=cpu_stat["throttled_usec"] * 1000 if "throttled_usec" in cpu_stat else None,
        memory_usage_bytes=usage,
        memory_max_usage_bytes=_int(path("memory.peak")),
        memory_failcnt=events.get("max"),
        memory_cache_bytes=memory.get("file"),
        memory_rss_bytes=memory.get("anon"),
        memory_mapped_file_bytes=memory.get("file_mapped"),
        memory_swap_bytes=_int(path("memory.swap.current")),
        memory_kernel_bytes=kernel,
        memory_working_set_bytes=_working_set(usage, memory.get("inactive_file")),
        memory_pgfault=memory.get("pgfault"),
        memory_pgmajfault=memory.get("pgmajfault"),
        oom_kills=events.get("oom_kill"),
        pids_current=_int(path("pids.current")),
        pids_max=_pids_max(path("pids.max")),
        io=_v2_io(path("io.stat")),
    )


def _v2_io(file_path: str) -> tuple[DeviceIO, ...]:
    """``MAJ:MIN rbytes=… wbytes=… rios=… wios=…`` lines of io.stat."""
    devices = []
    for line in (files.read_optional_text(file_path) or "").splitlines():
        fields = line.split()
        if not fields or ":" not in fields[0]:
            continue
        major, _, minor = fields[0].partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        values = dict(field.split("=", 1) for field in fields[1:] if "=" in field)
        numbers = {key: int(value) for key, value in values.items() if value.isdigit()}
        devices.append(
            DeviceIO(
                int(major), int(minor), read_bytes=numbers.get("rbytes", 0), write_bytes=numbers.get("wbytes", 0),
                reads=numbers.get("rios", 0), writes=numbers.get("wios", 0),
            )
        )
    return tuple(devices)
