"""Unit tests for qmprt.cgroups against fake v1 and v2 trees in tmp_path.

The fakes emulate what the kernel does on mkdir/rmdir in a cgroup filesystem (populate the control
files a real kernel shows, refuse to remove a busy cgroup); everything else is plain file I/O, so the
code under test reads and writes exactly the files it would on a real machine. The live twin of these
tests is tests/integration/test_cgroups_live.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from qmprt.cgroups import (
    UNLIMITED,
    CgroupBusy,
    CgroupDriver,
    CgroupError,
    CgroupLimits,
    CgroupNotFound,
    CgroupUnavailable,
    CgroupV1Driver,
    CgroupV2Driver,
    cpu_shares_to_weight,
    cpu_weight_to_shares,
    detect,
    parent_to_path,
    parse_mountinfo,
)
from qmprt.cgroups import files as cgroup_files
from qmprt.cgroups import v2 as cgroup_v2

V1_NO_LIMIT = "9223372036854771712"
V1_HIERARCHIES = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")


def mountinfo_escape(path: Path | str) -> str:
    """Escape a path the way the kernel writes it into mountinfo."""
    return (
        str(path).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
    )


def write_files(directory: Path, contents: dict[str, str]) -> None:
    for file_name, text in contents.items():
        (directory / file_name).write_text(text)


def read(path: Path) -> str:
    return path.read_text().strip()


class FakeKernelBase:
    """rmdir as the kernel does it: control files vanish with the directory; busy cgroups refuse."""

    def rmdir(self, directory: str) -> None:
        entries = list(Path(directory).iterdir())
        if any(entry.is_dir() for entry in entries) or (Path(directory) / "cgroup.procs").read_text().split():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), directory)
        for entry in entries:
            entry.unlink()
        os.rmdir(directory)


class FakeV1Kernel(FakeKernelBase):
    """A v1 tree under ``root``: one directory per hierarchy, populated as the kernel would."""

    def __init__(
        self,
        root: Path,
        hierarchies: Sequence[str] = V1_HIERARCHIES,
        swap_accounting: bool = True,
        oom_kill_field: bool = True,
        root_use_hierarchy: str = "1",
    ) -> None:
        self.root = root
        self.swap_accounting = swap_accounting
        self.oom_kill_field = oom_kill_field
        self.mounts = {hierarchy: root / hierarchy for hierarchy in hierarchies}
        for hierarchy, mount_point in self.mounts.items():
            mount_point.mkdir(parents=True)
            write_files(mount_point, {"cgroup.procs": "", "tasks": ""})
            controllers = hierarchy.split(",")
            if "cpuset" in controllers:
                write_files(mount_point, {"cpuset.cpus": "0-1\n", "cpuset.mems": "0\n"})
            if "memory" in controllers:
                write_files(mount_point, {"memory.use_hierarchy": f"{root_use_hierarchy}\n"})

    def mountinfo(self) -> str:
        return "".join(
            f"{32 + index} 31 0:{29 + index} / {mountinfo_escape(mount_point)} rw,relatime shared:{9 + index}"
            f" - cgroup cgroup rw,{hierarchy}\n"
            for index, (hierarchy, mount_point) in enumerate(self.mounts.items())
        )

    def driver(self) -> CgroupDriver:
        return detect(str(self.root), self.mountinfo(), self)

    def mkdir(self, directory: str) -> None:
        new_directory = Path(directory)
        os.mkdir(new_directory)
        hierarchy = next(name for name, mount in self.mounts.items() if mount in new_directory.parents)
        write_files(new_directory, {"cgroup.procs": "", "tasks": "", "notify_on_release": "0\n"})
        for controller in hierarchy.split(","):
            write_files(new_directory, self._controller_files(controller, new_directory.parent))

    def _controller_files(self, controller: str, parent: Path) -> dict[str, str]:
        if controller == "cpu":
            return {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n", "cpu.shares": "1024\n"}
        if controller == "cpuacct":
            return {"cpuacct.usage": "0\n"}
        if controller == "cpuset":
            return {"cpuset.cpus": "\n", "cpuset.mems": "\n"}
        if controller == "pids":
            return {"pids.max": "max\n", "pids.current": "0\n"}
        if controller == "freezer":
            return {"freezer.state": "THAWED\n"}
        if controller == "memory":
            memory_files = {
                "memory.limit_in_bytes": f"{V1_NO_LIMIT}\n",
                "memory.usage_in_bytes": "0\n",
                "memory.failcnt": "0\n",
                "memory.use_hierarchy": (parent / "memory.use_hierarchy").read_text(),
                "memory.stat": (
                    "cache 0\nrss 0\ninactive_file 0\ntotal_cache 0\ntotal_rss 0\ntotal_inactive_file 0\n"
                ),
                "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n"
                + ("oom_kill 0\n" if self.oom_kill_field else ""),
            }
            if self.swap_accounting:
                memory_files["memory.memsw.limit_in_bytes"] = f"{V1_NO_LIMIT}\n"
            return memory_files
        return {}


class FakeV2Kernel(FakeKernelBase):
    """A unified tree at ``root``; a new directory gets the files of the controllers its parent enabled."""

    def __init__(
        self,
        root: Path,
        available_controllers: str = "cpuset cpu io memory hugetlb pids rdma misc",
        cgroup_kill: bool = True,
        swap_accounting: bool = True,
    ) -> None:
        self.root = root
        self.cgroup_kill = cgroup_kill
        self.swap_accounting = swap_accounting
        root.mkdir(parents=True)
        write_files(
            root,
            {
                "cgroup.controllers": f"{available_controllers}\n",
                "cgroup.subtree_control": "\n",
                "cgroup.procs": "",
                "cpu.stat": "usage_usec 0\n",
            },
        )

    def mountinfo(self) -> str:
        return (
            f"25 30 0:23 / {mountinfo_escape(self.root)} rw,nosuid,nodev,noexec,relatime shared:9"
            " - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
        )

    def driver(self) -> CgroupDriver:
        return detect(str(self.root), self.mountinfo(), self)

    def mkdir(self, directory: str) -> None:
        new_directory = Path(directory)
        subtree_control_file = new_directory.parent / "cgroup.subtree_control"
        # The kernel shows enabled controllers without the "+" that enabled them.
        enabled = [token.lstrip("+") for token in subtree_control_file.read_text().split() if token[0] != "-"]
        subtree_control_file.write_text(" ".join(enabled) + "\n")
        os.mkdir(new_directory)
        write_files(
            new_directory,
            {
                "cgroup.controllers": " ".join(enabled) + "\n",
                "cgroup.subtree_control": "\n",
                "cgroup.procs": "",
                "cgroup.events": "populated 0\nfrozen 0\n",
                "cgroup.freeze": "0\n",
                "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
            },
        )
        if self.cgroup_kill:
            write_files(new_directory, {"cgroup.kill": ""})
        if "cpu" in enabled:
            write_files(new_directory, {"cpu.max": "max 100000\n", "cpu.weight": "100\n"})
        if "memory" in enabled:
            write_files(
                new_directory,
                {
                    "memory.max": "max\n",
                    "memory.current": "0\n",
                    "memory.stat": "anon 0\nfile 0\ninactive_file 0\nactive_file 0\n",
                    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
                },
            )
            if self.swap_accounting:
                write_files(new_directory, {"memory.swap.max": "max\n"})
        if "pids" in enabled:
            write_files(new_directory, {"pids.max": "max\n", "pids.current": "0\n"})
        if "cpuset" in enabled:
            write_files(new_directory, {"cpuset.cpus": "\n", "cpuset.mems": "\n"})


@pytest.fixture
def v1_kernel(tmp_path: Path) -> FakeV1Kernel:
    return FakeV1Kernel(tmp_path / "cgroup")


@pytest.fixture
def v2_kernel(tmp_path: Path) -> FakeV2Kernel:
    return FakeV2Kernel(tmp_path / "cgroup")


@pytest.fixture(params=["v1", "v2"], ids=["v1", "v2"])
def any_kernel(request: pytest.FixtureRequest, tmp_path: Path) -> FakeV1Kernel | FakeV2Kernel:
    if request.param == "v1":
        return FakeV1Kernel(tmp_path / "cgroup")
    return FakeV2Kernel(tmp_path / "cgroup")


@pytest.fixture
def recorded_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every control-file write, in order, as (file name, value)."""
    writes: list[tuple[str, str]] = []
    real_write_text = cgroup_files.write_text

    def recording_write_text(file_path: str, value: str) -> None:
        writes.append((os.path.basename(file_path), value))
        real_write_text(file_path, value)

    monkeypatch.setattr(cgroup_files, "write_text", recording_write_text)
    return writes


@pytest.fixture
def sleeping_child() -> Iterator[subprocess.Popen[bytes]]:
    """A process of our own that kill() may signal; never put a foreign pid where kill() can see it."""
    child = subprocess.Popen(["/bin/sleep", "60"], start_new_session=True)
    yield child
    if child.poll() is None:
        child.kill()
    child.wait(timeout=5)


# --- detect / mountinfo ---------------------------------------------------------------------------

HYBRID_MOUNTINFO = """\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

PURE_V2_MOUNTINFO = """\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""

COMOUNTED_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
37 31 0:34 / /sys/fs/cgroup/net_cls,net_prio rw,relatime shared:15 - cgroup cgroup rw,net_cls,net_prio
"""


def test_detect_hybrid_finds_v1_hierarchies_and_ignores_unified() -> None:
    driver = detect("/sys/fs/cgroup", HYBRID_MOUNTINFO)
    assert isinstance(driver, CgroupV1Driver)
    assert driver.version == 1
    assert driver.controller_mounts == {
        name: f"/sys/fs/cgroup/{name}" for name in V1_HIERARCHIES
    }


def test_detect_pure_v2() -> None:
    driver = detect("/sys/fs/cgroup", PURE_V2_MOUNTINFO)
    assert isinstance(driver, CgroupV2Driver)
    assert driver.version == 2
    assert driver.mount_point == "/sys/fs/cgroup"


def test_detect_comounted_cpu_cpuacct_share_one_directory(tmp_path: Path) -> None:
    driver = detect("/sys/fs/cgroup", COMOUNTED_MOUNTINFO)
    assert isinstance(driver, CgroupV1Driver)
    assert driver.controller_mounts["cpu"] == driver.controller_mounts["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert "net_cls" not in driver.controller_mounts

    kernel = FakeV1Kernel(tmp_path / "cgroup", hierarchies=("cpu,cpuacct", "cpuset", "memory", "pids"))
    cgroup = kernel.driver().create("qmprt/ab12")
    assert sorted(cgroup.directories) == sorted(
        str(tmp_path / "cgroup" / hierarchy / "qmprt/ab12")
        for hierarchy in ("cpu,cpuacct", "cpuset", "memory", "pids")
    )


def test_parse_mountinfo_unescapes_mount_points() -> None:
    mounts = parse_mountinfo("41 31 0:38 / /tmp/with\\040space/cg rw - cgroup2 cgroup2 rw\n")
    assert [mount.mount_point for mount in mounts] == ["/tmp/with space/cg"]


@pytest.mark.parametrize(
    "mountinfo",
    [
        "22 1 0:20 / /proc rw - proc proc rw\n",
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        HYBRID_MOUNTINFO.replace("rw,pids", "rw,rdma"),
    ],
    ids=["no-cgroup-fs", "only-empty-unified", "v1-without-pids"],
)
def test_detect_unusable_layouts(mountinfo: str) -> None:
    with pytest.raises(CgroupUnavailable):
        detect("/sys/fs/cgroup", mountinfo)


def test_detect_only_looks_under_the_given_root() -> None:
    with pytest.raises(CgroupUnavailable):
        detect("/elsewhere", PURE_V2_MOUNTINFO)


# --- parent_to_path -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("cgroup_parent", "driver", "expected"),
    [
        ("/kubepods/burstable/pod1234", "cgroupfs", "kubepods/burstable/pod1234"),
        ("kubepods/besteffort/pod1234", "cgroupfs", "kubepods/besteffort/pod1234"),
        ("/kubepods", "cgroupfs", "kubepods"),
        (
            "kubepods-burstable-pod12_34.slice",
            "systemd",
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice",
        ),
        ("kubepods.slice", "systemd", "kubepods.slice"),
        ("kubepods-pod12.slice", "systemd", "kubepods.slice/kubepods-pod12.slice"),
    ],
    ids=[
        "cgroupfs-burstable",
        "cgroupfs-relative",
        "cgroupfs-single",
        "systemd-burstable",
        "systemd-top",
        "systemd-guaranteed",
    ],
)
def test_parent_to_path(cgroup_parent: str, driver: str, expected: str) -> None:
    assert parent_to_path(cgroup_parent, driver) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cgroup_parent", "driver", "message"),
    [
        ("", "cgroupfs", "empty"),
        ("/", "cgroupfs", "root"),
        ("/kubepods/../../etc", "cgroupfs", "'..'"),
        ("/kubepods//pod1", "cgroupfs", "empty component"),
        ("/kubepods/pod1/", "cgroupfs", "empty component"),
        ("/kubepods/./pod1", "cgroupfs", "'.'"),
        ("/kubepods/pod\n1", "cgroupfs", "control characters"),
        ("kubepods-burstable", "systemd", "ending in '.slice'"),
        (".slice", "systemd", "ending in '.slice'"),
        ("-.slice", "systemd", "root slice"),
        ("kubepods--pod1.slice", "systemd", "doubled"),
        ("-kubepods.slice", "systemd", "leading"),
        ("kubepods/../x.slice", "systemd", "'/'"),
        ("kubepods-...slice", "systemd", "'..'"),
        ("/kubepods", "containerd", "unknown cgroup driver"),
    ],
    ids=[
        "empty",
        "cgroupfs-root",
        "dotdot-escape",
        "double-slash",
        "trailing-slash",
        "dot",
        "newline",
        "systemd-no-suffix",
        "systemd-bare-suffix",
        "systemd-root-slice",
        "systemd-double-dash",
        "systemd-leading-dash",
        "systemd-slash",
        "systemd-dotdot",
        "unknown-driver",
    ],
)
def test_parent_to_path_rejects(cgroup_parent: str, driver: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parent_to_path(cgroup_parent, driver)  # type: ignore[arg-type]


# --- create / open / exists / delete (both versions) ----------------------------------------------

def test_create_open_exists(any_kernel: FakeV1Kernel | FakeV2Kernel) -> None:
    driver = any_kernel.driver()
    assert not driver.exists("qmprt/ab12")
    with pytest.raises(CgroupNotFound):
        driver.open("qmprt/ab12")

    cgroup = driver.create("/qmprt/ab12")
    assert cgroup.path == "qmprt/ab12"
    assert all(os.path.isdir(directory) for directory in cgroup.directories)
    assert driver.exists("qmprt/ab12") and driver.exists("/qmprt/ab12")
    assert driver.open("qmprt/ab12").directories == cgroup.directories
    assert driver.create("qmprt/ab12").directories == cgroup.directories  # mkdir -p: existing is fine


@pytest.mark.parametrize(
    "bad_path",
    ["", "/", "../escape", "qmprt/../../x", "qmprt//x"],
    ids=["empty", "root", "dotdot", "inner-dotdot", "empty-component"],
)
def test_create_rejects_paths_outside_the_hierarchy(
    any_kernel: FakeV1Kernel | FakeV2Kernel, bad_path: str
) -> None:
    with pytest.raises(ValueError):
        any_kernel.driver().create(bad_path)


def test_delete_removes_every_directory_and_is_idempotent(any_kernel: FakeV1Kernel | FakeV2Kernel) -> None:
    driver = any_kernel.driver()
    cgroup = driver.create("qmprt/ab12")
    driver.create("qmprt/ab12/child")
    cgroup.delete()
    assert not any(os.path.exists(directory) for directory in cgroup.directories)
    assert not driver.exists("qmprt/ab12")
    assert driver.exists("qmprt") is True  # the parent level is shared, never removed
    cgroup.delete()
    cgroup.kill()


def test_delete_refuses_while_processes_remain(any_kernel: FakeV1Kernel | FakeV2Kernel) -> None:
    cgroup = any_kernel.driver().create("qmprt/busy")
    # delete() never signals, so a made-up pid is safe here.
    Path(cgroup.directories[0], "cgroup.procs").write_text("4194303\n")
    with pytest.raises(CgroupBusy, match="4194303"):
        cgroup.delete(timeout_s=0.05)  # type: ignore[call-arg]
    assert all(os.path.isdir(directory) for directory in cgroup.directories)


def test_add_pid_and_pids(any_kernel: FakeV1Kernel | FakeV2Kernel) -> None:
    driver = any_kernel.driver()
    cgroup = driver.create("qmprt/ab12")
    cgroup.add_pid(4242)
    assert all(read(Path(directory, "cgroup.procs")) == "4242" for directory in cgroup.directories)
    child = driver.create("qmprt/ab12/vcpu")
    Path(child.directories[-1], "cgroup.procs").write_text("17\n4243\n")
    assert cgroup.pids() == [17, 4242, 4243]


def test_exec_prefix_quotes_paths_and_keeps_the_pid(tmp_path: Path) -> None:
    awkward_root = tmp_path / "dir with space" / "it's \"quoted\"; $(touch pwned)"
    for kernel in (FakeV1Kernel(awkward_root / "v1"), FakeV2Kernel(awkward_root / "v2")):
        cgroup = kernel.driver().create("qmprt/it's here")
        prefix = cgroup.exec_prefix()
        assert prefix[0] == "/bin/sh" and prefix[-1] == "qmprt-cgexec"
        process = subprocess.run(
            [*prefix, sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        exec_pid = process.stdout.strip()
        for directory in cgroup.directories:
            assert read(Path(directory, "cgroup.procs")) == exec_pid
    assert not list(tmp_path.rglob("pwned"))


def test_exec_prefix_does_not_run_the_program_when_joining_fails(v2_kernel: FakeV2Kernel, tmp_path: Path) -> None:
    cgroup = v2_kernel.driver().create("qmprt/ab12")
    os.unlink(Path(cgroup.directories[0], "cgroup.procs"))
    os.mkdir(Path(cgroup.directories[0], "cgroup.procs"))  # a write to it fails
    marker = tmp_path / "ran"
    process = subprocess.run([*cgroup.exec_prefix(), "/bin/touch", str(marker)], capture_output=True, timeout=30)
    assert process.returncode != 0
    assert not marker.exists()


# --- v1 -------------------------------------------------------------------------------------------

def test_v1_create_makes_every_hierarchy_and_initialises_new_levels(tmp_path: Path) -> None:
    kernel = FakeV1Kernel(tmp_path / "cgroup", root_use_hierarchy="0")
    cgroup = kernel.driver().create("kubepods/pod1/qmprt-ab12")
    assert sorted(cgroup.directories) == sorted(
        str(kernel.mounts[name] / "kubepods/pod1/qmprt-ab12") for name in V1_HIERARCHIES
    )
    for level in ("kubepods", "kubepods/pod1", "kubepods/pod1/qmprt-ab12"):
        assert read(kernel.mounts["cpuset"] / level / "cpuset.cpus") == "0-1"
        assert read(kernel.mounts["cpuset"] / level / "cpuset.mems") == "0"
        assert read(kernel.mounts["memory"] / level / "memory.use_hierarchy") == "1"


def test_v1_create_keeps_an_existing_cpuset(v1_kernel: FakeV1Kernel) -> None:
    driver = v1_kernel.driver()
    driver.create("kubepods")
    (v1_kernel.mounts["cpuset"] / "kubepods" / "cpuset.cpus").write_text("1\n")
    driver.create("kubepods/pod1")
    assert read(v1_kernel.mounts["cpuset"] / "kubepods/pod1/cpuset.cpus") == "1"


def test_v1_create_failure_removes_what_it_made(v1_kernel: FakeV1Kernel) -> None:
    (v1_kernel.mounts["cpuset"] / "cpuset.cpus").write_text("\n")
    driver = v1_kernel.driver()
    with pytest.raises(CgroupError, match="empty cpuset.cpus"):
        driver.create("qmprt/ab12")
    assert not any((mount / "qmprt").exists() for mount in v1_kernel.mounts.values())


def test_v1_open_requires_every_required_hierarchy(v1_kernel: FakeV1Kernel) -> None:
    driver = v1_kernel.driver()
    cgroup = driver.create("qmprt/ab12")
    v1_kernel.rmdir(str(v1_kernel.mounts["pids"] / "qmprt/ab12"))
    assert not driver.exists("qmprt/ab12")
    with pytest.raises(CgroupNotFound, match="pids"):
        driver.open("qmprt/ab12")
    cgroup.delete()  # removes what is left
    assert not any((mount / "qmprt/ab12").exists() for mount in v1_kernel.mounts.values())


def test_v1_set_limits_writes_v1_files(v1_kernel: FakeV1Kernel) -> None:
    cgroup = v1_kernel.driver().create("qmprt/ab12")
    cgroup.set_limits(
        CgroupLimits(
            memory_bytes=64 << 20,
            memory_swap_bytes=128 << 20,
            cpu_quota_us=50000,
            cpu_period_us=100000,
            cpu_shares=512,
            pids_max=16,
            cpuset_cpus="0",
            cpuset_mems="0",
        )
    )
    level = "qmprt/ab12"
    assert read(v1_kernel.mounts["memory"] / level / "memory.limit_in_bytes") == str(64 << 20)
    assert read(v1_kernel.mounts["memory"] / level / "memory.memsw.limit_in_bytes") == str(128 << 20)
    assert read(v1_kernel.mounts["cpu"] / level / "cpu.cfs_quota_us") == "50000"
    assert read(v1_kernel.mounts["cpu"] / level / "cpu.cfs_period_us") == "100000"
    assert read(v1_kernel.mounts["cpu"] / level / "cpu.shares") == "512"
    assert read(v1_kernel.mounts["pids"] / level / "pids.max") == "16"
    assert read(v1_kernel.mounts["cpuset"] / level / "cpuset.cpus") == "0"
    assert read(v1_kernel.mounts["cpuset"] / level / "cpuset.mems") == "0"


def test_v1_set_limits_none_leaves_files_alone(
    v1_kernel: FakeV1Kernel, recorded_writes: list[tuple[str, str]]
) -> None:
    cgroup = v1_kernel.driver().create("qmprt/ab12")
    recorded_writes.clear()
    cgroup.set_limits(CgroupLimits())
    assert recorded_writes == []


def test_v1_unlimited_values(v1_kernel: FakeV1Kernel) -> None:
    cgroup = v1_kernel.driver().create("qmprt/ab12")
    cgroup.set_limits(CgroupLimits(memory_bytes=UNLIMITED, cpu_quota_us=UNLIMITED, pids_max=UNLIMITED))
    assert read(v1_kernel.mounts["memory"] / "qmprt/ab12/memory.limit_in_bytes") == "-1"
    assert read(v1_kernel.mounts["cpu"] / "qmprt/ab12/cpu.cfs_quota_us") == "-1"
    assert read(v1_kernel.mounts["pids"] / "qmprt/ab12/pids.max") == "max"
    # What a real kernel shows for "no limit" reads back as UNLIMITED.
    (v1_kernel.mounts["memory"] / "qmprt/ab12/memory.limit_in_bytes").write_text(f"{V1_NO_LIMIT}\n")
    limits = cgroup.read_limits()
    assert (limits.memory_bytes, limits.memory_swap_bytes, limits.cpu_quota_us, limits.pids_max) == (
        UNLIMITED,
        UNLIMITED,
        UNLIMITED,
        UNLIMITED,
    )


@pytest.mark.parametrize(
    ("current_swap", "memory_bytes", "memory_swap_bytes", "expected_order"),
    [
        (V1_NO_LIMIT, 64 << 20, 128 << 20, ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]),
        (str(32 << 20), 64 << 20, 128 << 20, ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]),
        (str(32 << 20), 64 << 20, UNLIMITED, ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]),
    ],
    ids=["shrinking-swap", "growing-swap", "unlimited-swap"],
)
def test_v1_memory_and_swap_write_order(
    v1_kernel: FakeV1Kernel,
    recorded_writes: list[tuple[str, str]],
    current_swap: str,
    memory_bytes: int,
    memory_swap_bytes: int,
    expected_order: list[str],
) -> None:
    cgroup = v1_kernel.driver().create("qmprt/ab12")
    (v1_kernel.mounts["memory"] / "qmprt/ab12/memory.memsw.limit_in_bytes").write_text(current_swap)
    recorded_writes.clear()
    cgroup.set_limits(CgroupLimits(memory_bytes=memory_bytes, memory_swap_bytes=memory_swap_bytes))
    assert [file_name for file_name, _ in recorded_writes] == expected_order


def test_v1_without_swap_accounting_skips_the_swap_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeV1Kernel(tmp_path / "cgroup", swap_accounting=False)
    cgroup = kernel.driver().create("qmprt/ab12")
    cgroup.set_limits(CgroupLimits(memory_bytes=64 << 20, memory_swap_bytes=64 << 20))
    assert read(kernel.mounts["memory"] / "qmprt/ab12/memory.limit_in_bytes") == str(64 << 20)
    assert not (kernel.mounts["memory"] / "qmprt/ab12/memory.memsw.limit_in_bytes").exists()
    assert "swap accounting is off" in caplog.text
    assert cgroup.read_limits().memory_swap_bytes is None


def test_v1_period_retried_after_quota_when_refused(
    v1_kernel: FakeV1Kernel, monkeypatch: pytest.MonkeyPatch, recorded_writes: list[tuple[str, str]]
) -> None:
    cgroup = v1_kernel.driver().create("qmprt/ab12")
    recorded_writes.clear()
    refusals = iter([True])
    recording_write_text = cgroup_files.write_text

    def write_refusing_first_period(file_path: str, value: str) -> None:
        if file_path.endswith("cpu.cfs_period_us") and next(refusals, False):
            recorded_writes.append(("refused", value))
            raise CgroupError("EINVAL")
        recording_write_text(file_path, value)

    monkeypatch.setattr(cgroup_files, "write_text", write_refusing_first_period)
    cgroup.set_limits(CgroupLimits(cpu_quota_us=20000, cpu_period_us=50000))
    assert recorded_writes == [("refused", "50000"), ("cpu.cfs_quota_us", "20000"), ("cpu.cfs_period_us", "50000")]


def test_v1_read_limits_round_trip(v1_kernel: FakeV1Kernel) -> None:
    cgroup = v1_kernel.driver().create("qmprt/ab12")
    limits = CgroupLimits(
        memory_bytes=256 << 20,
        memory_swap_bytes=512 << 20,
        cpu_quota_us=150000,
        cpu_period_us=100000,
        cpu_shares=2048,
        pids_max=100,
        cpuset_cpus="0-1",
        cpuset_mems="0",
    )
    cgroup.set_limits(limits)
    assert cgroup.read_limits() == limits


def test_v1_stats_parsing(v1_kernel: FakeV1Kernel) -> None:
    cgroup = v1_kernel.driver().create("qmprt/ab12")
    memory_directory = v1_kernel.mounts["memory"] / "qmprt/ab12"
    write_files(
        memory_directory,
        {
            "memory.usage_in_bytes": "10485760\n",
            "memory.stat": (
                "cache 4096\nrss 111\ninactive_file 222\n"
                "total_cache 8192\ntotal_rss 3145728\ntotal_inactive_file 2097152\n"
            ),
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        },
    )
    (v1_kernel.mounts["cpuacct"] / "qmprt/ab12/cpuacct.usage").write_text("123456789\n")
    (v1_kernel.mounts["pids"] / "qmprt/ab12/pids.current").write_text("3\n")
    stats = cgroup.stats()
    assert stats.cpu_usage_ns == 123456789
    assert stats.memory_usage_bytes == 10485760
    assert stats.memory_working_set_bytes == 10485760 - 2097152  # usage - total_inactive_file
    assert stats.memory_rss_bytes == 3145728  # total_rss, not rss
    assert stats.oom_kill_count == 2
    assert stats.pids_current == 3
    assert stats.timestamp_ns > 0


def test_v1_stats_without_hierarchical_totals_and_working_set_floor(v1_kernel: FakeV1Kernel) -> None:
    cgroup = v1_kernel.driver().create("qmprt/ab12")
    write_files(
        v1_kernel.mounts["memory"] / "qmprt/ab12",
        {"memory.usage_in_bytes": "1000\n", "memory.stat": "rss 700\ninactive_file 5000\n"},
    )
    stats = cgroup.stats()
    assert stats.memory_rss_bytes == 700
    assert stats.memory_working_set_bytes == 0


@pytest.mark.parametrize(
    ("oom_control", "failcnt", "expected"),
    [
        ("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n", "7", 0),
        ("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n", "0", 5),
        ("oom_kill_disable 0\nunder_oom 0\n", "0", 0),
        ("oom_kill_disable 0\nunder_oom 0\n", "12", 1),
    ],
    ids=["kill-counter-zero", "kill-counter", "old-kernel-never-hit", "old-kernel-limit-hit"],
)
def test_v1_oom_kill_count(v1_kernel: FakeV1Kernel, oom_control: str, failcnt: str, expected: int) -> None:
    cgroup = v1_kernel.driver().create("qmprt/ab12")
    write_files(
        v1_kernel.mounts["memory"] / "qmprt/ab12",
        {"memory.oom_control": oom_control, "memory.failcnt": f"{failcnt}\n"},
    )
    assert cgroup.oom_kill_count() == expected


def test_v1_kill_freezes_kills_and_thaws(
    v1_kernel: FakeV1Kernel, sleeping_child: subprocess.Popen[bytes], recorded_writes: list[tuple[str, str]]
) -> None:
    cgroup = v1_kernel.driver().create("qmprt/ab12")
    (v1_kernel.mounts["memory"] / "qmprt/ab12/cgroup.procs").write_text(f"{sleeping_child.pid}\n")
    recorded_writes.clear()
    cgroup.kill()
    assert sleeping_child.wait(timeout=5) == -9
    assert recorded_writes == [("freezer.state", "FROZEN"), ("freezer.state", "THAWED")]
    (v1_kernel.mounts["memory"] / "qmprt/ab12/cgroup.procs").write_text("")  # the kernel drops the dead
    cgroup.kill()  # idempotent on an empty cgroup
    cgroup.delete()
    cgroup.kill()  # and on a deleted one


def test_v1_kill_without_freezer(tmp_path: Path, sleeping_child: subprocess.Popen[bytes]) -> None:
    kernel = FakeV1Kernel(tmp_path / "cgroup", hierarchies=("cpu", "cpuacct", "cpuset", "memory", "pids"))
    cgroup = kernel.driver().create("qmprt/ab12")
    (kernel.mounts["pids"] / "qmprt/ab12/cgroup.procs").write_text(f"{sleeping_child.pid}\n")
    cgroup.kill()
    assert sleeping_child.wait(timeout=5) == -9


# --- v2 -------------------------------------------------------------------------------------------

def test_v2_create_enables_controllers_down_the_path(
    v2_kernel: FakeV2Kernel, recorded_writes: list[tuple[str, str]]
) -> None:
    driver = v2_kernel.driver()
    cgroup = driver.create("kubepods/pod1/qmprt-ab12")
    assert cgroup.directories == (str(v2_kernel.root / "kubepods/pod1/qmprt-ab12"),)
    assert recorded_writes == [("cgroup.subtree_control", "+cpuset +cpu +memory +pids")] * 3
    for level in ("", "kubepods", "kubepods/pod1"):
        assert read(v2_kernel.root / level / "cgroup.subtree_control") == "cpuset cpu memory pids"
    assert read(v2_kernel.root / "kubepods/pod1/qmprt-ab12/cgroup.controllers") == "cpuset cpu memory pids"
    recorded_writes.clear()
    driver.create("kubepods/pod1/qmprt-cd34")
    assert recorded_writes == []  # already enabled everywhere


def test_v2_create_without_cpuset_controller(tmp_path: Path) -> None:
    kernel = FakeV2Kernel(tmp_path / "cgroup", available_controllers="cpu io memory pids")
    cgroup = kernel.driver().create("qmprt/ab12")
    assert read(kernel.root / "cgroup.subtree_control") == "cpu memory pids"
    with pytest.raises(CgroupUnavailable, match="cpuset controller not enabled"):
        cgroup.set_limits(CgroupLimits(cpuset_cpus="0"))
    assert cgroup.read_limits().cpuset_cpus is None


def test_v2_create_without_memory_controller_fails_and_undoes(tmp_path: Path) -> None:
    kernel = FakeV2Kernel(tmp_path / "cgroup", available_controllers="cpu pids")
    with pytest.raises(CgroupUnavailable, match="memory"):
        kernel.driver().create("qmprt/ab12")
    assert not (kernel.root / "qmprt").exists()


def test_v2_set_limits_writes_v2_files(v2_kernel: FakeV2Kernel) -> None:
    cgroup = v2_kernel.driver().create("qmprt/ab12")
    cgroup.set_limits(
        CgroupLimits(
            memory_bytes=64 << 20,
            memory_swap_bytes=96 << 20,
            cpu_quota_us=50000,
            cpu_period_us=100000,
            cpu_shares=1024,
            pids_max=16,
            cpuset_cpus="0-1",
            cpuset_mems="0",
        )
    )
    leaf = v2_kernel.root / "qmprt/ab12"
    assert read(leaf / "memory.max") == str(64 << 20)
    assert read(leaf / "memory.swap.max") == str(32 << 20)  # memory+swap total minus memory
    assert read(leaf / "cpu.max") == "50000 100000"
    assert read(leaf / "cpu.weight") == "39"
    assert read(leaf / "pids.max") == "16"
    assert read(leaf / "cpuset.cpus") == "0-1"
    assert read(leaf / "cpuset.mems") == "0"


@pytest.mark.parametrize(
    ("limits", "cpu_max_before", "expected_cpu_max"),
    [
        (CgroupLimits(cpu_quota_us=UNLIMITED, cpu_period_us=100000), "50000 100000", "max 100000"),
        (CgroupLimits(cpu_quota_us=25000), "max 100000", "25000"),
        (CgroupLimits(cpu_period_us=50000), "20000 100000", "20000 50000"),
        (CgroupLimits(cpu_period_us=50000), "max 100000", "max 50000"),
    ],
    ids=["unlimited-quota", "quota-only", "period-only-keeps-quota", "period-only-unlimited"],
)
def test_v2_cpu_max(
    v2_kernel: FakeV2Kernel, limits: CgroupLimits, cpu_max_before: str, expected_cpu_max: str
) -> None:
    cgroup = v2_kernel.driver().create("qmprt/ab12")
    (v2_kernel.root / "qmprt/ab12/cpu.max").write_text(f"{cpu_max_before}\n")
    cgroup.set_limits(limits)
    assert read(v2_kernel.root / "qmprt/ab12/cpu.max") == expected_cpu_max


@pytest.mark.parametrize(
    ("memory_max_before", "limits", "expected_swap_max"),
    [
        ("max", CgroupLimits(memory_bytes=64 << 20, memory_swap_bytes=64 << 20), "0"),
        ("max", CgroupLimits(memory_bytes=64 << 20, memory_swap_bytes=UNLIMITED), "max"),
        (str(64 << 20), CgroupLimits(memory_swap_bytes=100 << 20), str(36 << 20)),
        ("max", CgroupLimits(memory_swap_bytes=100 << 20), str(100 << 20)),
    ],
    ids=["no-swap", "unlimited-swap", "uses-current-memory-max", "unlimited-memory"],
)
def test_v2_swap_conversion(
    v2_kernel: FakeV2Kernel, memory_max_before: str, limits: CgroupLimits, expected_swap_max: str
) -> None:
    cgroup = v2_kernel.driver().create("qmprt/ab12")
    (v2_kernel.root / "qmprt/ab12/memory.max").write_text(f"{memory_max_before}\n")
    cgroup.set_limits(limits)
    assert read(v2_kernel.root / "qmprt/ab12/memory.swap.max") == expected_swap_max


def test_v2_swap_below_memory_is_refused(v2_kernel: FakeV2Kernel) -> None:
    cgroup = v2_kernel.driver().create("qmprt/ab12")
    with pytest.raises(CgroupError, match="below the memory limit"):
        cgroup.set_limits(CgroupLimits(memory_bytes=64 << 20, memory_swap_bytes=32 << 20))


def test_v2_without_swap_accounting_skips_the_swap_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeV2Kernel(tmp_path / "cgroup", swap_accounting=False)
    cgroup = kernel.driver().create("qmprt/ab12")
    cgroup.set_limits(CgroupLimits(memory_bytes=64 << 20, memory_swap_bytes=64 << 20))
    assert read(kernel.root / "qmprt/ab12/memory.max") == str(64 << 20)
    assert "swap accounting is off" in caplog.text
    assert cgroup.read_limits().memory_swap_bytes is None


def test_v2_read_limits_round_trip(v2_kernel: FakeV2Kernel) -> None:
    cgroup = v2_kernel.driver().create("qmprt/ab12")
    limits = CgroupLimits(
        memory_bytes=256 << 20,
        memory_swap_bytes=512 << 20,
        cpu_quota_us=150000,
        cpu_period_us=100000,
        cpu_shares=cpu_weight_to_shares(39),
        pids_max=UNLIMITED,
        cpuset_cpus="1",
        cpuset_mems="0",
    )
    cgroup.set_limits(limits)
    assert cgroup.read_limits() == limits


def test_v2_read_limits_of_a_fresh_cgroup(v2_kernel: FakeV2Kernel) -> None:
    limits = v2_kernel.driver().create("qmprt/ab12").read_limits()
    assert limits == CgroupLimits(
        memory_bytes=UNLIMITED,
        memory_swap_bytes=UNLIMITED,
        cpu_quota_us=UNLIMITED,
        cpu_period_us=100000,
        cpu_shares=cpu_weight_to_shares(100),
        pids_max=UNLIMITED,
        cpuset_cpus="",
        cpuset_mems="",
    )


def test_v2_stats_parsing(v2_kernel: FakeV2Kernel) -> None:
    cgroup = v2_kernel.driver().create("qmprt/ab12")
    write_files(
        v2_kernel.root / "qmprt/ab12",
        {
            "cpu.stat": "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 0\n",
            "memory.current": "10485760\n",
            "memory.stat": (
                "anon 3145728\nfile 4194304\nkernel 65536\nactive_file 1048576\ninactive_file 2097152\n"
            ),
            "memory.events": "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n",
            "pids.current": "4\n",
        },
    )
    stats = cgroup.stats()
    assert stats.cpu_usage_ns == 2500 * 1000
    assert stats.memory_usage_bytes == 10485760
    assert stats.memory_working_set_bytes == 10485760 - 2097152
    assert stats.memory_rss_bytes == 3145728
    assert stats.oom_kill_count == 1
    assert stats.pids_current == 4


def test_v2_kill_uses_cgroup_kill(v2_kernel: FakeV2Kernel) -> None:
    cgroup = v2_kernel.driver().create("qmprt/ab12")
    cgroup.kill()
    assert read(v2_kernel.root / "qmprt/ab12/cgroup.kill") == "1"
    cgroup.delete()
    cgroup.kill()  # no-op once deleted


def test_v2_kill_without_cgroup_kill_freezes_kills_and_thaws(
    tmp_path: Path,
    sleeping_child: subprocess.Popen[bytes],
    recorded_writes: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cgroup_v2, "FREEZE_TIMEOUT_S", 0.05)  # the fake never reports "frozen 1"
    kernel = FakeV2Kernel(tmp_path / "cgroup", cgroup_kill=False)
    cgroup = kernel.driver().create("qmprt/ab12")
    (kernel.root / "qmprt/ab12/cgroup.procs").write_text(f"{sleeping_child.pid}\n")
    recorded_writes.clear()
    cgroup.kill()
    assert sleeping_child.wait(timeout=5) == -9
    assert recorded_writes == [("cgroup.freeze", "1"), ("cgroup.freeze", "0")]


# --- conversions and validation -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("cpu_shares", "cpu_weight"),
    [(1, 1), (2, 1), (1024, 39), (2048, 79), (262144, 10000), (10**6, 10000)],
    ids=["below-min", "min", "default", "two-cpus", "max", "above-max"],
)
def test_cpu_shares_to_weight(cpu_shares: int, cpu_weight: int) -> None:
    assert cpu_shares_to_weight(cpu_shares) == cpu_weight


def test_cpu_weight_to_shares_round_trips_every_weight() -> None:
    for cpu_weight in range(1, 10001):
        assert cpu_shares_to_weight(cpu_weight_to_shares(cpu_weight)) == cpu_weight


@pytest.mark.parametrize(
    "fields",
    [
        {"memory_bytes": -2},
        {"memory_swap_bytes": -5},
        {"cpu_quota_us": -3},
        {"pids_max": -2},
        {"cpu_period_us": 0},
        {"cpu_shares": 0},
        {"cpuset_cpus": "0-1; rm -rf /"},
        {"cpuset_mems": "a"},
    ],
    ids=["memory", "swap", "quota", "pids", "period", "shares", "cpuset-cpus", "cpuset-mems"],
)
def test_limits_validation(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CgroupLimits(**fields)  # type: ignore[arg-type]



def test_v1_counters_for_metrics(v1_kernel: FakeV1Kernel) -> None:
    cgroup = v1_kernel.driver().create("qmprt/ab12")
    memory = v1_kernel.mounts["memory"] / "qmprt/ab12"
    write_files(
        memory,
        {
            "memory.usage_in_bytes": "10485760\n",
            "memory.max_usage_in_bytes": "20971520\n",
            "memory.failcnt": "3\n",
            "memory.kmem.usage_in_bytes": "65536\n",
            "memory.stat": (
                "total_cache 8192\ntotal_rss 3145728\ntotal_mapped_file 4096\ntotal_inactive_file 2097152\n"
                "total_pgfault 77\ntotal_pgmajfault 5\n"
            ),
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        },
    )
    cpuacct = v1_kernel.mounts["cpuacct"] / "qmprt/ab12"
    write_files(cpuacct, {"cpuacct.usage": "2500000000\n", "cpuacct.stat": "user 150\nsystem 50\n"})
    write_files(
        v1_kernel.mounts["cpu"] / "qmprt/ab12", {"cpu.stat": "nr_periods 10\nnr_throttled 4\nthrottled_time 3000\n"}
    )
    write_files(v1_kernel.mounts["pids"] / "qmprt/ab12", {"pids.current": "2\n", "pids.max": "1024\n"})
    write_files(
        v1_kernel.mounts["blkio"] / "qmprt/ab12",
        {
            "blkio.throttle.io_service_bytes": "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n",
            "blkio.throttle.io_serviced": "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
        },
    )
    counters = cgroup.counters()
    ticks = os.sysconf("SC_CLK_TCK")
    assert counters.cpu_usage_ns == 2_500_000_000
    assert counters.cpu_user_ns == 150 * (1_000_000_000 // ticks)
    assert (counters.cpu_periods, counters.cpu_throttled_periods, counters.cpu_throttled_ns) == (10, 4, 3000)
    assert counters.memory_max_usage_bytes == 20971520 and counters.memory_failcnt == 3
    assert counters.memory_cache_bytes == 8192 and counters.memory_mapped_file_bytes == 4096
    assert counters.memory_working_set_bytes == 10485760 - 2097152
    assert counters.memory_kernel_bytes == 65536 and counters.memory_pgmajfault == 5
    assert counters.oom_kills == 1 and counters.pids_current == 2 and counters.pids_max == 1024
    [device] = counters.io
    assert (device.major, device.minor, device.read_bytes, device.write_bytes, device.reads, device.writes) == (
        8, 0, 4096, 8192, 1, 2
    )


def test_v2_counters_for_metrics(v2_kernel: FakeV2Kernel) -> None:
    cgroup = v2_kernel.driver().create("qmprt/ab12")
    write_files(
        v2_kernel.root / "qmprt/ab12",
        {
            "cpu.stat": "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 6\nnr_throttled 1\nthrottled_usec 7\n",
            "memory.current": "10485760\n",
            "memory.peak": "11000000\n",
            "memory.swap.current": "0\n",
            "memory.stat": "anon 3145728\nfile 4194304\nfile_mapped 100\nkernel 65536\ninactive_file 2097152\npgfault 9\n",
            "memory.events": "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\n",
            "pids.current": "4\n",
            "pids.max": "max\n",
            "io.stat": "259:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n",
        },
    )
    counters = cgroup.counters()
    assert counters.cpu_usage_ns == 2_500_000 and counters.cpu_system_ns == 500_000
    assert counters.cpu_throttled_ns == 7000 and counters.cpu_throttled_periods == 1
    assert counters.memory_max_usage_bytes == 11000000 and counters.memory_failcnt == 12
    assert counters.memory_cache_bytes == 4194304 and counters.memory_rss_bytes == 3145728
    assert counters.memory_kernel_bytes == 65536 and counters.memory_pgfault == 9 and counters.memory_pgmajfault is None
    assert counters.pids_max is None, "max is no limit"
    assert counters.io[0].read_bytes == 100 and counters.io[0].writes == 2


def test_counters_of_missing_controllers_are_none(v2_kernel: FakeV2Kernel) -> None:
    counters = v2_kernel.driver().create("qmprt/empty").counters()
    assert counters.memory_max_usage_bytes is None and counters.memory_pgmajfault is None and counters.io == ()
