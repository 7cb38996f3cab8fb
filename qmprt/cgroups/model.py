"""The cgroup interface shared by the v1 and v2 implementations: limits, stats and the protocols.

Units follow cgroup v1 and the CRI (``LinuxContainerResources``) so callers never convert:
bytes, microseconds, v1 CPU shares. The v2 implementation converts to v2's files itself.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Protocol

from qmprt.cgroups.counters import CgroupCounters

UNLIMITED = -1
"""Limit value meaning "no limit" (``max`` in v2 files, ``-1`` or the page-counter maximum in v1)."""

CPU_SHARES_MIN = 2
CPU_SHARES_MAX = 262144
CPU_WEIGHT_MIN = 1
CPU_WEIGHT_MAX = 10000

_CPU_LIST = re.compile(r"^(\d+(-\d+)?)(,\d+(-\d+)?)*$")


@dataclasses.dataclass(frozen=True)
class CgroupLimits:
    """Resource limits of one cgroup; ``None`` means "leave as is" when setting, "not available" when read.

    ``memory_swap_bytes`` is memory + swap together, as v1's ``memory.memsw.limit_in_bytes`` and the
    CRI's ``memory_swap_limit_in_bytes`` define it; v2 writes the difference to ``memory.swap.max``.
    ``UNLIMITED`` (-1) is accepted for memory, memory+swap, CPU quota and pids.
    """

    memory_bytes: int | None = None
    memory_swap_bytes: int | None = None
    cpu_quota_us: int | None = None
    cpu_period_us: int | None = None
    cpu_shares: int | None = None
    pids_max: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "memory_swap_bytes", "cpu_quota_us", "pids_max"):
            value = getattr(self, name)
            if value is not None and value < 0 and value != UNLIMITED:
                raise ValueError(f"{name} must be >= 0 or UNLIMITED (-1), got {value}")
        if self.cpu_period_us is not None and self.cpu_period_us <= 0:
            raise ValueError(f"cpu_period_us must be > 0, got {self.cpu_period_us}")
        if self.cpu_shares is not None and self.cpu_shares <= 0:
            raise ValueError(f"cpu_shares must be > 0, got {self.cpu_shares}")
        for name in ("cpuset_cpus", "cpuset_mems"):
            cpu_list = getattr(self, name)
            if cpu_list and not _CPU_LIST.match(cpu_list):
                raise ValueError(f"{name} must be a list like '0-3,6', got {cpu_list!r}")


@dataclasses.dataclass(frozen=True)
class CgroupStats:
    """A point-in-time sample of a cgroup's usage, computed the way cadvisor/kubelet compute it."""

    cpu_usage_ns: int
    memory_usage_bytes: int
    memory_working_set_bytes: int
    """Usage minus inactive file pages (v1 ``total_inactive_file``, v2 ``inactive_file``), floored at 0."""
    memory_rss_bytes: int
    """v1 ``total_rss`` (``rss`` when the total is absent), v2 ``anon``."""
    oom_kill_count: int
    pids_current: int
    timestamp_ns: int
    """Wall clock (``time.time_ns()``) when the sample was taken, as the CRI reports it."""


class Cgroup(Protocol):
    """One cgroup, in every hierarchy it lives in (v1) or in the unified hierarchy (v2)."""

    @property
    def path(self) -> str:
        """Relative to the hierarchy root, no leading slash, e.g. ``kubepods/burstable/pod1/qmprt-ab12``."""
        ...

    @property
    def directories(self) -> tuple[str, ...]:
        """The absolute directories that make up this cgroup (one per v1 hierarchy, one in v2)."""
        ...

    def exec_prefix(self) -> list[str]:
        """An argv prefix that moves the process into this cgroup, then execs the rest (pid kept)."""
        ...

    def add_pid(self, pid: int) -> None: ...

    def pids(self) -> list[int]:
        """Every process in this cgroup and its descendants, sorted."""
        ...

    def set_limits(self, limits: CgroupLimits) -> None: ...

    def read_limits(self) -> CgroupLimits: ...

    def stats(self) -> CgroupStats: ...

    def counters(self) -> CgroupCounters:
        """Every counter cAdvisor-style metrics report (``qmprt.cgroups.counters``)."""
        ...

    def oom_kill_count(self) -> int: ...

    def kill(self) -> None: ...

    def delete(self) -> None: ...
    def delete_if_empty(self) -> bool: ...


class CgroupDriver(Protocol):
    """Creates and finds cgroups in one cgroup filesystem layout (v1 hierarchies or v2)."""

    @property
    def version(self) -> int: ...

    def create(self, path: str) -> Cgroup: ...

    def open(self, path: str) -> Cgroup: ...

    def exists(self, path: str) -> bool: ...


def cpu_shares_to_weight(cpu_shares: int) -> int:
    """Convert v1 ``cpu.shares`` to v2 ``cpu.weight`` with kubelet's formula (KEP-2254).

    ``1 + ((shares - 2) * 9999) // 262142``, shares clamped to [2, 262144] first, as the kernel clamps
    ``cpu.shares``. This is the formula kubelet uses for its own cgroups and runc used until 1.3;
    newer runc/crun use a quadratic fit that maps 1024 to 100 instead.
    """
    clamped_shares = min(max(cpu_shares, CPU_SHARES_MIN), CPU_SHARES_MAX)
    return 1 + ((clamped_shares - 2) * 9999) // 262142


def cpu_weight_to_shares(cpu_weight: int) -> int:
    """The smallest v1 shares value that :func:`cpu_shares_to_weight` maps back to ``cpu_weight``.

    kubelet's inverse (``((w - 1) * 262142) // 9999 + 2``) does not round-trip through the forward
    formula; this one does, so reading limits and writing them back leaves ``cpu.weight`` unchanged.
    """
    clamped_weight = min(max(cpu_weight, CPU_WEIGHT_MIN), CPU_WEIGHT_MAX)
    return 2 + -(-(clamped_weight - 1) * 262142 // 9999)
