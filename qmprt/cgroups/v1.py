"""cgroup v1: one directory per hierarchy (cpu, cpuacct, cpuset, memory, pids, and blkio/devices/freezer
where mounted), kept in step by this module.

Assumptions: each controller is mounted once under the cgroup root (``cpu,cpuacct`` co-mounted in one
hierarchy is fine); qmprt's cgroups are leaves or hold only qmprt-made children.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from qmprt.cgroups import files
from qmprt.cgroups.counters import CgroupCounters, read_v1
from qmprt.cgroups.errors import CgroupBusy, CgroupError, CgroupNotFound, CgroupUnavailable
from qmprt.cgroups.model import UNLIMITED, CgroupLimits, CgroupStats
from qmprt.cgroups.paths import normalize_cgroup_path
from qmprt.cgroups.processes import exec_prefix_for, kill_until_empty, send_sigkill, wait_until

log = logging.getLogger(__name__)

V1_REQUIRED_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids")
V1_OPTIONAL_CONTROLLERS = ("blkio", "devices", "freezer")

V1_UNLIMITED_THRESHOLD = 1 << 62
"""v1 shows "no limit" as the page counter maximum (0x7FFFFFFFFFFFF000 with 4 KiB pages); anything
this large is treated as unlimited."""

DELETE_TIMEOUT_S = 2.0
FREEZE_TIMEOUT_S = 1.0


def _limit_text(value: int) -> str:
    return "-1" if value == UNLIMITED else str(value)


def _pids_max_text(value: int) -> str:
    return "max" if value == UNLIMITED else str(value)


def _read_v1_bytes_limit(file_path: str) -> int:
    value = files.read_int(file_path)
    return UNLIMITED if value >= V1_UNLIMITED_THRESHOLD else value


class CgroupV1:
    """A cgroup that exists as one directory in each of several v1 hierarchies."""

    def __init__(
        self,
        path: str,
        controller_directories: Mapping[str, str],
        directory_ops: files.DirectoryOps,
    ) -> None:
        self._path = path
        self._controller_directories = dict(controller_directories)
        self._directory_ops = directory_ops

    def __repr__(self) -> str:
        return f"CgroupV1({self._path!r})"

    @property
    def path(self) -> str:
        return self._path

    @property
    def directories(self) -> tuple[str, ...]:
        """One directory per hierarchy; co-mounted controllers share theirs."""
        return tuple(dict.fromkeys(self._controller_directories.values()))

    def _file(self, controller: str, file_name: str) -> str:
        return os.path.join(self._controller_directories[controller], file_name)

    def exec_prefix(self) -> list[str]:
        return exec_prefix_for([os.path.join(directory, files.PROCS_FILE) for directory in self.directories])

    def add_pid(self, pid: int) -> None:
        for directory in self.directories:
            files.write_text(os.path.join(directory, files.PROCS_FILE), str(pid))

    def pids(self) -> list[int]:
        """Processes in any of this cgroup's hierarchy directories or their sub-directories."""
        found: set[int] = set()
        for directory in self.directories:
            for level in files.descendant_directories(directory):
                found.update(files.read_pids(level))
        return sorted(found)

    def set_limits(self, limits: CgroupLimits) -> None:
        """Write the limits that are not ``None``.

        ``memory_swap_bytes`` goes to ``memory.memsw.limit_in_bytes`` only when the kernel has swap
        accounting (the file exists); otherwise it is skipped with a warning, because there is no swap
        limit to enforce.
        """
        if limits.memory_bytes is not None or limits.memory_swap_bytes is not None:
            self._set_memory(limits.memory_bytes, limits.memory_swap_bytes)
        if limits.cpu_quota_us is not None or limits.cpu_period_us is not None:
            self._set_cpu_bandwidth(limits.cpu_quota_us, limits.cpu_period_us)
        if limits.cpu_shares is not None:
            files.write_text(self._file("cpu", "cpu.shares"), str(limits.cpu_shares))
        if limits.pids_max is not None:
            files.write_text(self._file("pids", "pids.max"), _pids_max_text(limits.pids_max))
        if limits.cpuset_cpus is not None:
            files.write_text(self._file("cpuset", "cpuset.cpus"), limits.cpuset_cpus)
        if limits.cpuset_mems is not None:
            files.write_text(self._file("cpuset", "cpuset.mems"), limits.cpuset_mems)

    def _set_memory(self, memory_bytes: int | None, memory_swap_bytes: int | None) -> None:
        memory_limit_file = self._file("memory", "memory.limit_in_bytes")
        swap_limit_file = self._file("memory", "memory.memsw.limit_in_bytes")
        if memory_swap_bytes is not None and not os.path.exists(swap_limit_file):
            log.warning("swap accounting is off (%s missing): memory+swap limit not applied", swap_limit_file)
            memory_swap_bytes = None
        if memory_swap_bytes is None:
            if memory_bytes is not None:
                files.write_text(memory_limit_file, _limit_text(memory_bytes))
            return
        # The kernel keeps memory <= memory+swap at every step, so raise memsw first when it grows.
        current_swap_limit = _read_v1_bytes_limit(swap_limit_file)
        swap_grows = memory_swap_bytes == UNLIMITED or (
            current_swap_limit != UNLIMITED and current_swap_limit < memory_swap_bytes
        )
        if swap_grows:
            files.write_text(swap_limit_file, _limit_text(memory_swap_bytes))
        if memory_bytes is not None:
            files.write_text(memory_limit_file, _limit_text(memory_bytes))
        if not swap_grows:
            files.write_text(swap_limit_file, _limit_text(memory_swap_bytes))

    def _set_cpu_bandwidth(self, cpu_quota_us: int | None, cpu_period_us: int | None) -> None:
        quota_file = self._file("cpu", "cpu.cfs_quota_us")
        period_file = self._file("cpu", "cpu.cfs_period_us")
        # As runc does: a shorter period can be refused while the old quota is still in place
        # (quota/period would exceed the parent's), so retry it after the quota.
        period_error: CgroupError | None = None
        if cpu_period_us is not None:
            try:
                files.write_text(period_file, str(cpu_period_us))
            except CgroupError as err:
                if cpu_quota_us is None:
                    raise
                period_error = err
        if cpu_quota_us is not None:
            files.write_text(quota_file, _limit_text(cpu_quota_us))
        if period_error is not None and cpu_period_us is not None:
            files.write_text(period_file, str(cpu_period_us))

    def read_limits(self) -> CgroupLimits:
        """Limits as the files show them; unlimited reads as ``UNLIMITED``; no swap accounting → ``None``."""
        swap_limit_file = self._file("memory", "memory.memsw.limit_in_bytes")
        return CgroupLimits(
            memory_bytes=_read_v1_bytes_limit(self._file("memory", "memory.limit_in_bytes")),
            memory_swap_bytes=(
                _read_v1_bytes_limit(swap_limit_file) if os.path.exists(swap_limit_file) else None
            ),
            cpu_quota_us=files.read_int(self._file("cpu", "cpu.cfs_quota_us")),
            cpu_period_us=files.read_int(self._file("cpu", "cpu.cfs_period_us")),
            cpu_shares=files.read_int(self._file("cpu", "cpu.shares")),
            pids_max=files.read_limit(self._file("pids", "pids.max")),
            cpuset_cpus=files.read_text(self._file("cpuset", "cpuset.cpus")).strip(),
            cpuset_mems=files.read_text(self._file("cpuset", "cpuset.mems")).strip(),
        )

    def stats(self) -> CgroupStats:
        memory_stat = files.read_key_values(self._file("memory", "memory.stat"))
        memory_usage = files.read_int(self._file("memory", "memory.usage_in_bytes"))
        inactive_file = memory_stat.get("total_inactive_file", memory_stat.get("inactive_file", 0))
        return CgroupStats(
            cpu_usage_ns=files.read_int(self._file("cpuacct", "cpuacct.usage")),
            memory_usage_bytes=memory_usage,
            memory_working_set_bytes=max(memory_usage - inactive_file, 0),
            memory_rss_bytes=memory_stat.get("total_rss", memory_stat.get("rss", 0)),
            oom_kill_count=self.oom_kill_count(),
            pids_current=files.read_int(self._file("pids", "pids.current")),
            timestamp_ns=time.time_ns(),
        )

    def counters(self) -> CgroupCounters:
        return read_v1(self._controller_directories)

    def oom_kill_count(self) -> int:
        """OOM kills in this cgroup, from the ``oom_kill`` field of ``memory.oom_control`` (kernel ≥ 4.13).

        Older kernels have no kill counter. Then this falls back to ``memory.failcnt``: it returns 1 once
        the memory limit has been hit at all, 0 before. That over-reports (reclaim can satisfy a charge
        that hit the limit without killing anything) and never counts past 1.
        """
        oom_control = files.read_key_values(self._file("memory", "memory.oom_control"))
        if "oom_kill" in oom_control:
            return oom_control["oom_kill"]
        return 1 if files.read_int(self._file("memory", "memory.failcnt")) > 0 else 0

    def kill(self) -> None:
        """SIGKILL every process; freezes the cgroup first when the freezer hierarchy is mounted.

        Returns without waiting for the processes to exit. A no-op on an empty or deleted cgroup.
        """
        if not self.pids():
            return
        freezer_state_file = (
            self._file("freezer", "freezer.state") if "freezer" in self._controller_directories else None
        )
        if freezer_state_file is None or not os.path.exists(freezer_state_file):
            kill_until_empty(self.pids)
            return
        files.write_text(freezer_state_file, "FROZEN")
        try:
            if not wait_until(
                lambda: files.read_text(freezer_state_file).strip() == "FROZEN", FREEZE_TIMEOUT_S
            ):
                log.warning("cgroup %s did not finish freezing; killing anyway", self._path)
            send_sigkill(self.pids())
        finally:
            files.write_text(freezer_state_file, "THAWED")
        kill_until_empty(self.pids)

    def delete(self, timeout_s: float = DELETE_TIMEOUT_S) -> None:
        """Remove the directory (and sub-directories) in every hierarchy; a no-op if already gone.

        Waits up to ``timeout_s`` for the processes to exit; raises ``CgroupBusy`` if some remain.
        """
        deadline = time.monotonic() + timeout_s
        existing_directories = [directory for directory in self.directories if os.path.isdir(directory)]
        if not existing_directories:
            return
        if not wait_until(lambda: not self.pids(), timeout_s):
            raise CgroupBusy(f"cgroup {self._path} still has processes {self.pids()} after {timeout_s} s")
        for directory in existing_directories:
            for level in files.descendant_directories(directory):
                files.remove_directory(self._directory_ops, level, deadline)

    def delete_if_empty(self) -> bool:
        """Remove this cgroup only when it has no child cgroups and no processes (a shared parent)."""
        if self.pids():
            return False
        existing = [directory for directory in self.directories if os.path.isdir(directory)]
        return files.remove_if_empty(self._directory_ops, existing)


class CgroupV1Driver:
    """Creates cgroups across the v1 hierarchies named in ``controller_mounts`` (controller → mount point)."""

    version = 1

    def __init__(
        self,
        controller_mounts: Mapping[str, str],
        directory_ops: files.DirectoryOps | None = None,
    ) -> None:
        missing = [name for name in V1_REQUIRED_CONTROLLERS if name not in controller_mounts]
        if missing:
            raise CgroupUnavailable(f"cgroup v1 hierarchies not mounted: {', '.join(missing)}")
        self._controller_mounts = {
            name: mount_point
            for name, mount_point in controller_mounts.items()
            if name in V1_REQUIRED_CONTROLLERS or name in V1_OPTIONAL_CONTROLLERS
        }
        self._directory_ops = directory_ops or files.KernelDirectoryOps()

    def __repr__(self) -> str:
        return f"CgroupV1Driver({self._controller_mounts!r})"

    @property
    def controller_mounts(self) -> dict[str, str]:
        return dict(self._controller_mounts)

    def _controller_directories(self, relative_path: str) -> dict[str, str]:
        return {
            name: os.path.join(mount_point, relative_path) for name, mount_point in self._controller_mounts.items()
        }

    def create(self, path: str) -> CgroupV1:
        """mkdir -p the cgroup in every hierarchy; existing levels are reused. Undone on failure."""
        relative_path = normalize_cgroup_path(path)
        controllers_by_mount: dict[str, set[str]] = {}
        for name, mount_point in self._controller_mounts.items():
            controllers_by_mount.setdefault(mount_point, set()).add(name)
        created_directories: list[str] = []
        try:
            for mount_point, controllers in controllers_by_mount.items():
                self._make_levels(mount_point, relative_path, controllers, created_directories)
        except BaseException:
            files.remove_created_directories(self._directory_ops, created_directories)
            raise
        return CgroupV1(relative_path, self._controller_directories(relative_path), self._directory_ops)

    def _make_levels(
        self, mount_point: str, relative_path: str, controllers: set[str], created_directories: list[str]
    ) -> None:
        parent_directory = mount_point
        for component in relative_path.split("/"):
            level_directory = os.path.join(parent_directory, component)
            is_new = files.make_directory(self._directory_ops, level_directory)
            if is_new:
                created_directories.append(level_directory)
            if "cpuset" in controllers:
                _inherit_cpuset(parent_directory, level_directory)
            if "memory" in controllers and is_new:
                _enable_memory_hierarchy(level_directory)
            parent_directory = level_directory

    def open(self, path: str) -> CgroupV1:
        """An existing cgroup; ``CgroupNotFound`` unless it exists in every required hierarchy."""
        relative_path = normalize_cgroup_path(path)
        controller_directories = self._controller_directories(relative_path)
        missing = [
            name for name in V1_REQUIRED_CONTROLLERS if not os.path.isdir(controller_directories[name])
        ]
        if missing:
            raise CgroupNotFound(f"cgroup {relative_path} does not exist in hierarchies: {', '.join(missing)}")
        present_directories = {
            name: directory for name, directory in controller_directories.items() if os.path.isdir(directory)
        }
        return CgroupV1(relative_path, present_directories, self._directory_ops)

    def exists(self, path: str) -> bool:
        relative_path = normalize_cgroup_path(path)
        controller_directories = self._controller_directories(relative_path)
        return all(os.path.isdir(controller_directories[name]) for name in V1_REQUIRED_CONTROLLERS)


def _inherit_cpuset(parent_directory: str, level_directory: str) -> None:
    """Copy cpuset.cpus/mems from the parent into a level that has none: v1 refuses tasks otherwise."""
    for file_name in ("cpuset.cpus", "cpuset.mems"):
        level_file = os.path.join(level_directory, file_name)
        if files.read_text(level_file).strip():
            continue
        parent_value = files.read_text(os.path.join(parent_directory, file_name)).strip()
        if not parent_value:
            raise CgroupError(
                f"cannot initialise {level_file}: parent {parent_directory} has an empty {file_name}"
            )
        files.write_text(level_file, parent_value)


def _enable_memory_hierarchy(level_directory: str) -> None:
    """Turn on hierarchical accounting in a new memory cgroup, so children's usage counts against it.

    Only possible while the cgroup has no children, hence only for levels just created. Kernels ≥ 5.16
    always report 1 and need nothing.
    """
    use_hierarchy_file = os.path.join(level_directory, "memory.use_hierarchy")
    current_value = files.read_optional_text(use_hierarchy_file)
    if current_value is not None and current_value.strip() == "0":
        files.write_text(use_hierarchy_file, "1")
