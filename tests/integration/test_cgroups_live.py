"""qmprt.cgroups on this machine's real cgroup filesystem (the twin of tests/unit/test_cgroups.py).

Needs root. Every test works under a cgroup named ``qmprt-test-<random>`` at the hierarchy root, starts
only its own processes, and its fixture kills and removes everything it made even when the test fails,
then asserts that no directory is left in any hierarchy. Kept light: a sleep and one 64 MiB allocation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from qmprt.cgroups import (
    Cgroup,
    CgroupDriver,
    CgroupLimits,
    CgroupUnavailable,
    CgroupV1Driver,
    CgroupV2Driver,
    detect,
)

CGROUP_ROOT = "/sys/fs/cgroup"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root"),
    pytest.mark.skipif(not os.path.isdir(CGROUP_ROOT), reason=f"no cgroup filesystem at {CGROUP_ROOT}"),
]


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def proc_cgroup_paths(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as {controller: path}; the v2 entry is under the key ""."""
    paths: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup", encoding="ascii") as proc_cgroup:
        for line in proc_cgroup.read().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def read_control_file(directory: str, file_name: str) -> str:
    with open(os.path.join(directory, file_name), encoding="ascii") as control_file:
        return control_file.read().strip()


def directory_for(cgroup: Cgroup, hierarchy_name: str) -> str:
    """The cgroup's directory in the hierarchy mounted at <root>/<hierarchy_name> (v1)."""
    return next(
        directory
        for directory in cgroup.directories
        if directory.startswith(os.path.join(CGROUP_ROOT, hierarchy_name) + "/")
    )


class LiveCgroups:
    """Creates test cgroups under one unique top-level name and undoes everything afterwards."""

    def __init__(self, driver: CgroupDriver) -> None:
        self.driver = driver
        self.top_name = f"qmprt-test-{uuid.uuid4().hex[:12]}"
        self.cgroups: list[Cgroup] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def create(self, leaf_name: str) -> Cgroup:
        cgroup = self.driver.create(f"{self.top_name}/{leaf_name}")
        self.cgroups.append(cgroup)
        return cgroup

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.processes.append(process)
        return process

    def hierarchy_mounts(self) -> list[str]:
        if isinstance(self.driver, CgroupV1Driver):
            return sorted(set(self.driver.controller_mounts.values()))
        assert isinstance(self.driver, CgroupV2Driver)
        return [self.driver.mount_point]

    def leftover_directories(self) -> list[str]:
        return [
            os.path.join(mount, self.top_name)
            for mount in self.hierarchy_mounts()
            if os.path.exists(os.path.join(mount, self.top_name))
        ]

    def cleanup(self) -> None:
        """Kill, reap, delete; then rmdir whatever is left directly. Raises the first error after trying all."""
        errors: list[Exception] = []
        for cgroup in reversed(self.cgroups):
            try:
                cgroup.kill()
            except Exception as err:  # noqa: BLE001 - keep cleaning up
                errors.append(err)
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired as err:
                errors.append(err)
        for cgroup in reversed(self.cgroups):
            try:
                cgroup.delete()
            except Exception as err:  # noqa: BLE001
                errors.append(err)
        for top_directory in self.leftover_directories():
            for level_directory, _, _ in os.walk(top_directory, topdown=False):
                try:
                    os.rmdir(level_directory)
                except OSError as err:
                    errors.append(err)
        if errors:
            raise errors[0]


@pytest.fixture(scope="module")
def driver() -> CgroupDriver:
    try:
        return detect()
    except CgroupUnavailable as err:
        pytest.skip(f"no usable cgroup filesystem: {err}")


@pytest.fixture
def live(driver: CgroupDriver) -> Iterator[LiveCgroups]:
    live_cgroups = LiveCgroups(driver)
    try:
        yield live_cgroups
    finally:
        live_cgroups.cleanup()
        assert live_cgroups.leftover_directories() == []


def test_detect_matches_this_machine(driver: CgroupDriver) -> None:
    filesystem_type = subprocess.run(
        ["stat", "-f", "-c", "%T", CGROUP_ROOT], capture_output=True, text=True, check=True
    ).stdout.strip()
    if filesystem_type == "cgroup2fs":
        assert driver.version == 2
        assert isinstance(driver, CgroupV2Driver) and driver.mount_point == CGROUP_ROOT
    else:
        # Hybrid (this development machine) or legacy: v1 hierarchies, the cgroup2 "unified" mount ignored.
        assert driver.version == 1
        assert isinstance(driver, CgroupV1Driver)
        for controller in ("cpu", "cpuacct", "cpuset", "memory", "pids"):
            assert os.path.ismount(driver.controller_mounts[controller])
        assert not any(mount.endswith("/unified") for mount in driver.controller_mounts.values())


def test_lifecycle_of_a_process_in_a_cgroup(driver: CgroupDriver, live: LiveCgroups) -> None:
    cgroup = live.create("vm")
    assert driver.exists(cgroup.path)
    sleep = live.spawn([*cgroup.exec_prefix(), "/bin/sleep", "60"])

    # exec, not fork: the pid Popen reported becomes /bin/sleep itself.
    sleep_binary = os.path.realpath("/bin/sleep")
    assert wait_for(lambda: os.readlink(f"/proc/{sleep.pid}/exe") == sleep_binary), "the prefix never exec'd sleep"
    assert cgroup.pids() == [sleep.pid]
    assert driver.open(cgroup.path).pids() == [sleep.pid]  # re-adoption sees the same process

    cgroup_paths = proc_cgroup_paths(sleep.pid)
    if driver.version == 1:
        for controller in ("memory", "cpu", "cpuacct", "cpuset", "pids"):
            assert cgroup_paths[controller] == f"/{cgroup.path}", controller
    else:
        assert cgroup_paths[""] == f"/{cgroup.path}"

    limits = CgroupLimits(
        memory_bytes=64 << 20, cpu_quota_us=50000, cpu_period_us=100000, pids_max=16, cpuset_cpus="0"
    )
    cgroup.set_limits(limits)
    read_back = cgroup.read_limits()
    assert (read_back.memory_bytes, read_back.cpu_quota_us, read_back.cpu_period_us) == (64 << 20, 50000, 100000)
    assert (read_back.pids_max, read_back.cpuset_cpus) == (16, "0")
    assert read_back.cpuset_mems  # inherited from the parent, never empty
    if driver.version == 1:
        assert read_control_file(directory_for(cgroup, "memory"), "memory.limit_in_bytes") == str(64 << 20)
        assert read_control_file(directory_for(cgroup, "cpu"), "cpu.cfs_quota_us") == "50000"
        assert read_control_file(directory_for(cgroup, "cpu"), "cpu.cfs_period_us") == "100000"
        assert read_control_file(directory_for(cgroup, "pids"), "pids.max") == "16"
        assert read_control_file(directory_for(cgroup, "cpuset"), "cpuset.cpus") == "0"
    else:
        leaf_directory = cgroup.directories[0]
        assert read_control_file(leaf_directory, "memory.max") == str(64 << 20)
        assert read_control_file(leaf_directory, "cpu.max") == "50000 100000"
        assert read_control_file(leaf_directory, "pids.max") == "16"
        assert read_control_file(leaf_directory, "cpuset.cpus") == "0"

    assert wait_for(lambda: cgroup.stats().cpu_usage_ns > 0 and cgroup.stats().memory_usage_bytes > 0)
    stats = cgroup.stats()
    assert stats.pids_current == 1
    assert 0 < stats.memory_working_set_bytes <= stats.memory_usage_bytes
    assert stats.oom_kill_count == 0

    cgroup.kill()
    assert sleep.wait(timeout=5) == -signal.SIGKILL
    cgroup.kill()  # idempotent

    cgroup.delete()
    assert not any(os.path.exists(directory) for directory in cgroup.directories)
    assert not driver.exists(cgroup.path)
    cgroup.delete()  # a second delete is a no-op


def test_add_pid_moves_a_running_process(driver: CgroupDriver, live: LiveCgroups) -> None:
    cgroup = live.create("adopted")
    sleep = live.spawn(["/bin/sleep", "60"])
    cgroup.add_pid(sleep.pid)
    assert cgroup.pids() == [sleep.pid]
    expected_key = "memory" if driver.version == 1 else ""
    assert proc_cgroup_paths(sleep.pid)[expected_key] == f"/{cgroup.path}"


def test_oom_kill_is_counted(live: LiveCgroups) -> None:
    cgroup = live.create("oom")
    limit_bytes = 16 << 20
    # memory+swap equal to memory: no swapping out of the OOM (skipped where swap is not accounted).
    cgroup.set_limits(CgroupLimits(memory_bytes=limit_bytes, memory_swap_bytes=limit_bytes))
    assert cgroup.oom_kill_count() == 0
    hog = live.spawn([*cgroup.exec_prefix(), sys.executable, "-c", "hog = b'\\x01' * (64 << 20)"])
    return_code = hog.wait(timeout=60)
    stderr = hog.stderr.read().decode(errors="replace") if hog.stderr else ""
    assert return_code == -signal.SIGKILL, f"expected an OOM kill, got {return_code}: {stderr}"
    assert wait_for(lambda: cgroup.oom_kill_count() >= 1, timeout_s=2)
    assert cgroup.stats().oom_kill_count >= 1


def test_delete_if_empty_spares_a_parent_in_use() -> None:
    driver = detect()
    parent_path = f"qmprt-test-shared-{os.getpid()}"
    child = driver.create(f"{parent_path}/other-instance")
    try:
        parent = driver.open(parent_path)
        assert parent.delete_if_empty() is False
        assert driver.exists(f"{parent_path}/other-instance")
        child.delete()
        assert parent.delete_if_empty() is True
        assert not driver.exists(parent_path)
    finally:
        if driver.exists(parent_path):
            driver.open(parent_path).delete()
