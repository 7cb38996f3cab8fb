"""cgroup v2: one directory in the unified hierarchy, controllers enabled down the path as needed.

Assumptions: the ancestors this module enables controllers in hold no processes of their own (v2's
"no internal processes" rule; the kernel refuses with EBUSY otherwise, reported as ``CgroupBusy``).
"""

from __future__ import annotations

import logging
import os
import time

from qmprt.cgroups import files
from qmprt.cgroups.counters import CgroupCounters, read_v2
from qmprt.cgroups.errors import CgroupBusy, CgroupError, CgroupNotFound, CgroupUnavailable
from qmprt.cgroups.model import (
    UNLIMITED,
    CgroupLimits,
    CgroupStats,
    cpu_shares_to_weight,
    cpu_weight_to_shares,
)
from qmprt.cgroups.paths import normalize_cgroup_path
from qmprt.cgroups.processes import exec_prefix_for, kill_until_empty, send_sigkill, wait_until

log = logging.getLogger(__name__)

V2_REQUIRED_CONTROLLERS = ("cpu", "memory", "pids")
V2_OPTIONAL_CONTROLLERS = ("cpuset",)

DELETE_TIMEOUT_S = 2.0
FREEZE_TIMEOUT_S = 1.0


def _max_text(value: int) -> str:
    return "max" if value == UNLIMITED else str(value)


def swap_total_to_swap_max(memory_swap_bytes: int, memory_bytes: int) -> int:
    """v2 ``memory.swap.max`` for a v1-style memory+swap total, as runc converts it.

    Returns ``UNLIMITED`` for an unlimited total; with unlimited memory the total is taken as the swap
    limit itself. Raises ``ValueError`` when the total is below the memory limit.
    """
    if memory_swap_bytes == UNLIMITED:
        return UNLIMITED
    if memory_bytes == UNLIMITED:
        return memory_swap_bytes
    if memory_swap_bytes < memory_bytes:
        raise ValueError(
            f"memory+swap limit {memory_swap_bytes} is below the memory limit {memory_bytes}"
        )
    return memory_swap_bytes - memory_bytes


class CgroupV2:
    """A cgroup in the unified (v2) hierarchy."""

    def __init__(self, path: str, directory: str, directory_ops: files.DirectoryOps) -> None:
        self._path = path
        self._directory = directory
        self._directory_ops = directory_ops

    def __repr__(self) -> str:
        return f"CgroupV2({self._path!r})"

    @property
    def path(self) -> str:
        return self._path

    @property
    def directories(self) -> tuple[str, ...]:
        return (self._directory,)

    def _file(self, file_name: str) -> str:
        return os.path.join(self._directory, file_name)

    def exec_prefix(self) -> list[str]:
        return exec_prefix_for([self._file(files.PROCS_FILE)])

    def add_pid(self, pid: int) -> None:
        files.write_text(self._file(files.PROCS_FILE), str(pid))

    def pids(self) -> list[int]:
        """Processes in this cgroup and its descendants."""
        found: set[int] = set()
        for level in files.descendant_directories(self._directory):
            found.update(files.read_pids(level))
        return sorted(found)

    def set_limits(self, limits: CgroupLimits) -> None:
        """Write the limits that are not ``None``, converted to v2 files.

        ``cpu_shares`` becomes ``cpu.weight`` (see ``cpu_shares_to_weight``); ``memory_swap_bytes`` (a
        memory+swap total) becomes ``memory.swap.max`` = total − memory, using the current
        ``memory.max`` when ``memory_bytes`` is not given. Without ``memory.swap.max`` (swap accounting
        off) the swap limit is skipped with a warning. Cpuset limits need the cpuset controller.
        """
        if limits.memory_bytes is not None:
            files.write_text(self._file("memory.max"), _max_text(limits.memory_bytes))
        if limits.memory_swap_bytes is not None:
            self._set_swap(limits.memory_swap_bytes, limits.memory_bytes)
        if limits.cpu_quota_us is not None or limits.cpu_period_us is not None:
            self._set_cpu_max(limits.cpu_quota_us, limits.cpu_period_us)
        if limits.cpu_shares is not None:
            files.write_text(self._file("cpu.weight"), str(cpu_shares_to_weight(limits.cpu_shares)))
        if limits.pids_max is not None:
            files.write_text(self._file("pids.max"), _max_text(limits.pids_max))
        for file_name, cpu_list in (("cpuset.cpus", limits.cpuset_cpus), ("cpuset.mems", limits.cpuset_mems)):
            if cpu_list is None:
                continue
            if not os.path.exists(self._file(file_name)):
                raise CgroupUnavailable(f"cannot set {file_name} of {self._path}: cpuset controller not enabled")
            files.write_text(self._file(file_name), cpu_list)

    def _set_swap(self, memory_swap_bytes: int, memory_bytes: int | None) -> None:
        swap_max_file = self._file("memory.swap.max")
        if not os.path.exists(swap_max_file):
            log.warning("swap accounting is off (%s missing): memory+swap limit not applied", swap_max_file)
            return
        effective_memory_bytes = (
            memory_bytes if memory_bytes is not None else files.read_limit(self._file("memory.max"))
        )
        try:
            swap_max = swap_total_to_swap_max(memory_swap_bytes, effective_memory_bytes)
        except ValueError as err:
            raise CgroupError(f"cannot set the swap limit of {self._path}: {err}") from err
        files.write_text(swap_max_file, _max_text(swap_max))

    def _set_cpu_max(self, cpu_quota_us: int | None, cpu_period_us: int | None) -> None:
        cpu_max_file = self._file("cpu.max")
        if cpu_quota_us is None:
            current_quota_text = files.read_text(cpu_max_file).split()[0]
            files.write_text(cpu_max_file, f"{current_quota_text} {cpu_period_us}")
        elif cpu_period_us is None:
            files.write_text(cpu_max_file, _max_text(cpu_quota_us))  # the kernel keeps the period
        else:
            files.write_text(cpu_max_file, f"{_max_text(cpu_quota_us)} {cpu_period_us}")

    def read_limits(self) -> CgroupLimits:
        """Limits as the files show them, in the v1/CRI units of ``CgroupLimits``.

        ``cpu_shares`` is the smallest shares value with the same weight (the conversion is lossy);
        ``memory_swap_bytes`` is memory.max + memory.swap.max (``None`` without swap accounting);
        cpuset fields are ``None`` when the cpuset controller is not enabled, ``""`` when inherited.
        """
        memory_bytes = files.read_limit(self._file("memory.max"))
        swap_max_text = files.read_optional_text(self._file("memory.swap.max"))
        memory_swap_bytes: int | None = None
        if swap_max_text is not None:
            swap_max = files.read_limit(self._file("memory.swap.max"))
            unlimited = UNLIMITED in (swap_max, memory_bytes)
            memory_swap_bytes = UNLIMITED if unlimited else memory_bytes + swap_max
        quota_text, period_text = files.read_text(self._file("cpu.max")).split()
        cpuset_cpus = files.read_optional_text(self._file("cpuset.cpus"))
        cpuset_mems = files.read_optional_text(self._file("cpuset.mems"))
        return CgroupLimits(
            memory_bytes=memory_bytes,
            memory_swap_bytes=memory_swap_bytes,
            cpu_quota_us=UNLIMITED if quota_text == "max" else int(quota_text),
            cpu_period_us=int(period_text),
            cpu_shares=cpu_weight_to_shares(files.read_int(self._file("cpu.weight"))),
            pids_max=files.read_limit(self._file("pids.max")),
            cpuset_cpus=cpuset_cpus.strip() if cpuset_cpus is not None else None,
            cpuset_mems=cpuset_mems.strip() if cpuset_mems is not None else None,
        )

    def stats(self) -> CgroupStats:
        memory_stat = files.read_key_values(self._file("memory.stat"))
        memory_usage = files.read_int(self._file("memory.current"))
        cpu_stat = files.read_key_values(self._file("cpu.stat"))
        return CgroupStats(
            cpu_usage_ns=cpu_stat.get("usage_usec", 0) * 1000,
            memory_usage_bytes=memory_usage,
            memory_working_set_bytes=max(memory_usage - memory_stat.get("inactive_file", 0), 0),
            memory_rss_bytes=memory_stat.get("anon", 0),
            oom_kill_count=self.oom_kill_count(),
            pids_current=files.read_int(self._file("pids.current")),
            timestamp_ns=time.time_ns(),
        )

    def counters(self) -> CgroupCounters:
        return read_v2(self._directory)

    def oom_kill_count(self) -> int:
        """The ``oom_kill`` field of ``memory.events``: kills in this cgroup and its descendants."""
        return files.read_key_values(self._file("memory.events")).get("oom_kill", 0)

    def kill(self) -> None:
        """SIGKILL every process: ``cgroup.kill`` (kernel ≥ 5.14), else freeze, kill each, thaw.

        Returns without waiting for the processes to exit. A no-op on an empty or deleted cgroup.
        """
        if not os.path.isdir(self._directory):
            return
        kill_file = self._file("cgroup.kill")
        if os.path.exists(kill_file):
            files.write_text(kill_file, "1")
            return
        if not self.pids():
            return
        freeze_file = self._file("cgroup.freeze")
        if not os.path.exists(freeze_file):
            kill_until_empty(self.pids)
            return
        files.write_text(freeze_file, "1")
        try:
            if not wait_until(self._is_frozen, FREEZE_TIMEOUT_S):
                log.warning("cgroup %s did not finish freezing; killing anyway", self._path)
            send_sigkill(self.pids())
        finally:
            files.write_text(freeze_file, "0")
        kill_until_empty(self.pids)

    def _is_frozen(self) -> bool:
        return files.read_key_values(self._file("cgroup.events")).get("frozen") == 1

    def delete(self, timeout_s: float = DELETE_TIMEOUT_S) -> None:
        """Remove the directory (and sub-directories); a no-op if already gone.

        Waits up to ``timeout_s`` for the processes to exit; raises ``CgroupBusy`` if some remain.
        """
        if not os.path.isdir(self._directory):
            return
        deadline = time.monotonic() + timeout_s
        if not wait_until(lambda: not self.pids(), timeout_s):
            raise CgroupBusy(f"cgroup {self._path} still has processes {self.pids()} after {timeout_s} s")
        for level in files.descendant_directories(self._directory):
            files.remove_directory(self._directory_ops, level, deadline)

    def delete_if_empty(self) -> bool:
        """Remove this cgroup only when it has no child cgroups and no processes (a shared parent)."""
        if not os.path.isdir(self._directory):
            return True
        if self.pids():
            return False
        return files.remove_if_empty(self._directory_ops, [self._directory])


class CgroupV2Driver:
    """Creates cgroups in the unified hierarchy mounted at ``mount_point``."""

    version = 2

    def __init__(self, mount_point: str, directory_ops: files.DirectoryOps | None = None) -> None:
        self._mount_point = mount_point
        self._directory_ops = directory_ops or files.KernelDirectoryOps()

    def __repr__(self) -> str:
        return f"CgroupV2Driver({self._mount_point!r})"

    @property
    def mount_point(self) -> str:
        return self._mount_point

    def create(self, path: str) -> CgroupV2:
        """mkdir -p the cgroup, enabling cpu, memory, pids (and cpuset when available) in each ancestor's
        ``cgroup.subtree_control`` on the way down. Directories made by a failed call are removed."""
        relative_path = normalize_cgroup_path(path)
        created_directories: list[str] = []
        try:
            parent_directory = self._mount_point
            for component in relative_path.split("/"):
                _enable_controllers(parent_directory)
                level_directory = os.path.join(parent_directory, component)
                if files.make_directory(self._directory_ops, level_directory):
                    created_directories.append(level_directory)
                parent_directory = level_directory
        except BaseException:
            files.remove_created_directories(self._directory_ops, created_directories)
            raise
        return CgroupV2(relative_path, os.path.join(self._mount_point, relative_path), self._directory_ops)

    def open(self, path: str) -> CgroupV2:
        relative_path = normalize_cgroup_path(path)
        directory = os.path.join(self._mount_point, relative_path)
        if not os.path.isdir(directory):
            raise CgroupNotFound(f"cgroup {relative_path} does not exist under {self._mount_point}")
        return CgroupV2(relative_path, directory, self._directory_ops)

    def exists(self, path: str) -> bool:
        return os.path.isdir(os.path.join(self._mount_point, normalize_cgroup_path(path)))


def _enable_controllers(directory: str) -> None:
    """Make cpu, memory, pids (and cpuset if available) available to ``directory``'s children."""
    available = files.read_text(os.path.join(directory, "cgroup.controllers")).split()
    missing = [name for name in V2_REQUIRED_CONTROLLERS if name not in available]
    if missing:
        raise CgroupUnavailable(f"controllers {', '.join(missing)} not available in {directory}")
    subtree_control_file = os.path.join(directory, "cgroup.subtree_control")
    enabled = files.read_text(subtree_control_file).split()
    to_enable = [
        name
        for name in (*V2_OPTIONAL_CONTROLLERS, *V2_REQUIRED_CONTROLLERS)
        if name in available and name not in enabled
    ]
    if to_enable:
        files.write_text(subtree_control_file, " ".join(f"+{name}" for name in to_enable))
