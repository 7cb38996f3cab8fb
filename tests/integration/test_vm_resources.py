"""VM resources on real QEMU: vCPUs and RAM the guest sees, NUMA binding, the balloon, thread pinning.

Boots two tiny guests: a 2-vCPU one bound to host node 0 (sizes, query-memdev, balloon, pinning) and
a 2-node guest topology (on hugepages when the host kernel lets the test reserve some).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmprt import cgroups
from qmprt.errors import InvalidArgument
from qmprt.vm.config import VMConfig
from qmprt.vm.machine import VM
from qmprt.vm.numa import HugepageConfig, host_memory_nodes
from qmprt.vm.pinning import format_id_list

from .conftest import make_cgroup
from .guests import TinyGuest, vm_config

BOOT_TIMEOUT = 90
MIB = 1024 * 1024
KERNEL_RESERVE_MIB = 48
HUGEPAGES_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")

HOST_CPUS = sorted(os.sched_getaffinity(0))


async def start(
    tiny: TinyGuest, config: VMConfig, tmp_path: Path, run_dir: Path, vms: list[VM], driver: cgroups.CgroupDriver
) -> VM:
    cgroup = make_cgroup(driver, config.vm_id)
    with contextlib.ExitStack() as undo:
        undo.callback(cgroup.delete)
        undo.callback(cgroup.kill)
        vm = await VM.start(config, tmp_path / config.vm_id, run_dir / config.vm_id, cgroup=cgroup)
        undo.pop_all()
    vms.append(vm)
    await vm.wait_for_console(tiny.ready_marker, BOOT_TIMEOUT)
    return vm


def configure(tiny: TinyGuest, tmp_path: Path, vm_id: str, **fields: object) -> VMConfig:
    return dataclasses.replace(vm_config(tiny, tmp_path / vm_id, vm_id), **fields)  # type: ignore[arg-type]


async def guest_output(vm: VM, *argv: str) -> str:
    result = await vm.agent.exec(list(argv), timeout=30)
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode()


async def meminfo_kib(vm: VM) -> dict[str, int]:
    text = await guest_output(vm, "cat", "/proc/meminfo")
    return {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()}


def affinity(pid: int, thread_id: int) -> str:
    for line in Path(f"/proc/{pid}/task/{thread_id}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for thread {thread_id}")


def affinities(pid: int) -> dict[int, str]:
    return {int(tid): affinity(pid, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(len(HOST_CPUS) < 2, reason="the pinning checks need two host CPUs")
async def test_vcpus_memory_binding_balloon_and_pinning(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    config = configure(tiny, tmp_path, f"{vm_tag}-res", cpus=2, memory_mib=128, host_nodes=(0,))
    vm = await start(tiny, config, tmp_path, run_dir, vms, cgroup_driver)
    assert vm.monitor is not None and vm.status.pid is not None
    pid = vm.status.pid

    # What the guest sees: two vCPUs, and the RAM less what its kernel keeps for itself (the cloud
    # kernel's image, page structures and firmware areas: about 35 MiB, whatever the RAM size).
    assert (await guest_output(vm, "nproc")).strip() == "2"
    total_kib = (await meminfo_kib(vm))["MemTotal"]
    assert (128 - KERNEL_RESERVE_MIB) * 1024 < total_kib <= 128 * 1024, total_kib

    # RAM is one backend, bound to host node 0.
    memdevs = await vm.monitor.execute("query-memdev")
    assert [(m["id"], m["size"], m["host-nodes"], m["policy"]) for m in memdevs] == [("mem0", 128 * MIB, [0], "bind")]

    # The balloon takes 32 MiB from the guest. With deflate-on-oom the guest keeps counting ballooned
    # pages in MemTotal (Linux lowers MemTotal only for a balloon it may not deflate): they leave MemFree.
    assert (await vm.monitor.execute("query-balloon"))["actual"] == 128 * MIB
    free_before = (await meminfo_kib(vm))["MemFree"]
    await vm.monitor.execute("balloon", {"value": 96 * MIB})
    for _ in range(100):
        if (await vm.monitor.execute("query-balloon"))["actual"] == 96 * MIB:
            break
        await asyncio.sleep(0.1)
    assert (await vm.monitor.execute("query-balloon"))["actual"] == 96 * MIB
    ballooned = await meminfo_kib(vm)
    assert ballooned["MemFree"] <= free_before - 28 * 1024, (free_before, ballooned)
    await vm.monitor.execute("balloon", {"value": 128 * MIB})

    # Pinning: one-to-one on two CPUs, shared on one, moved to the other, and back. QEMU's own
    # -sandbox resourcecontrol=deny does not stand in the way: qmprt sets the affinities from outside.
    first, second = (str(cpu) for cpu in HOST_CPUS[:2])
    both = format_id_list(HOST_CPUS[:2])
    vcpus = {vcpu.index: vcpu.thread_id for vcpu in await vm.monitor.query_vcpus()}
    report = await vm.pin(both)
    assert report.mode == "one-to-one"
    placed = affinities(pid)
    assert (placed[vcpus[0]], placed[vcpus[1]]) == (first, second)
    assert {cpus for tid, cpus in placed.items() if tid not in vcpus.values()} == {both}
    assert {(t.thread_id, t.vcpu, format_id_list(t.cpus)) for t in report.threads if t.role == "vcpu"} == {
        (vcpus[0], 0, first), (vcpus[1], 1, second),
    }
    assert (await vm.pin(both)).changed == 0

    assert (await vm.pin(first)).mode == "shared"
    assert set(affinities(pid).values()) == {first}
    await vm.pin(second)
    assert set(affinities(pid).values()) == {second}
    await vm.pin(both)
    placed = affinities(pid)
    assert (placed[vcpus[0]], placed[vcpus[1]]) == (first, second)
    with pytest.raises(InvalidArgument, match="'x' is neither"):
        await vm.pin(f"{first},x")
    with pytest.raises(InvalidArgument, match="not online"):
        await vm.pin("8000")

    # The guest still runs on its pinned vCPUs.
    assert (await guest_output(vm, "nproc")).strip() == "2"
    await vm.stop(grace=30)


async def test_start_refuses_host_nodes_this_host_lacks(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    missing = max(host_memory_nodes()) + 1
    config = configure(tiny, tmp_path, f"{vm_tag}-nonode", host_nodes=(missing,))
    with pytest.raises(InvalidArgument, match=f"host NUMA node {missing} does not exist"):
        await start(tiny, config, tmp_path, run_dir, vms, cgroup_driver)
    assert not (tmp_path / config.vm_id / "vm.json").exists()


@pytest.fixture
def hugetlbfs(tmp_path: Path) -> Iterator[Path | None]:
    """A hugetlbfs mount with 64 more 2 MiB pages reserved for the test, or None if the kernel says no."""
    nr_hugepages = Path("/proc/sys/vm/nr_hugepages")
    try:
        before = int(nr_hugepages.read_text())
        nr_hugepages.write_text(str(before + 64))
    except OSError:
        yield None
        return
    mount = tmp_path / "hugepages"
    mount.mkdir()
    mounted = False
    try:
        if int(nr_hugepages.read_text()) >= before + 64:
            mounted = subprocess.run(
                ["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "hugetlbfs", str(mount)], capture_output=True
            ).returncode == 0
        yield mount if mounted else None
    finally:
        try:
            if mounted:
                subprocess.run(["umount", str(mount)], check=True)
        finally:
            with contextlib.suppress(OSError):
                nr_hugepages.write_text(str(before))


def free_hugepages() -> int:
    return int((HUGEPAGES_2M / "free_hugepages").read_text())


# hugetlbfs comes before vms: its teardown (unmount, give the pages back) runs after the VMs are gone.
async def test_two_node_guest_topology(hugetlbfs, tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    hugepages = HugepageConfig(mount=str(hugetlbfs)) if hugetlbfs is not None else None
    config = configure(
        tiny, tmp_path, f"{vm_tag}-numa", cpus=2, memory_mib=128, guest_numa_nodes=2, host_nodes=(0,),
        hugepages=hugepages,
    )
    free_before = free_hugepages() if hugepages is not None else 0
    vm = await start(tiny, config, tmp_path, run_dir, vms, cgroup_driver)
    assert vm.monitor is not None

    nodes = (await guest_output(vm, "ls", "/sys/devices/system/node/")).split()
    assert sorted(name for name in nodes if name.startswith("node")) == ["node0", "node1"]
    cpulists = [(await guest_output(vm, "cat", f"/sys/devices/system/node/node{i}/cpulist")).strip() for i in (0, 1)]
    assert cpulists == ["0", "1"]

    memdevs = sorted(await vm.monitor.execute("query-memdev"), key=lambda m: m["id"])
    assert [(m["id"], m["size"], m["host-nodes"], m["policy"]) for m in memdevs] == [
        ("mem0", 64 * MIB, [0], "bind"), ("mem1", 64 * MIB, [0], "bind"),
    ]
    if hugepages is not None:
        # Preallocated: all 64 pages are taken from the start.
        assert all(m["prealloc"] for m in memdevs)
        assert free_before - free_hugepages() == 64
    await vm.stop(grace=30)
