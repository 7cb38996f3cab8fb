"""A VM pod gets what its resources grant, enforced by its cgroup; a runaway VM is OOM-killed alone."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from pathlib import Path

import pytest

from qmprt.errors import FailedPrecondition, InvalidArgument
from qmprt.pod.specs import ContainerMetadata, Resources
from qmprt.pod.states import ContainerState

from .conftest import TEST_CGROUP_ROOT
from .pods import container_spec, open_runtime, sandbox_spec, wait_for_log

MIB = 1 << 20


def allowed_cpus(pid: int, thread_id: int) -> str:
    status = Path(f"/proc/{pid}/task/{thread_id}/status").read_text()
    return re.search(r"Cpus_allowed_list:\s*(\S+)", status).group(1)  # type: ignore[union-attr]


async def guest_memtotal_mib(runtime, container_id: str) -> int:
    meminfo = await runtime.exec_sync(container_id, ["cat", "/proc/meminfo"], 30)
    match = re.search(rb"MemTotal:\s+(\d+) kB", meminfo.stdout)
    assert match, meminfo.stdout
    return int(match.group(1)) // 1024


async def test_resources_become_guest_size_and_cgroup_limits(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    state_dir, run_dir, cni_dir = runtime_dirs
    runtime = await open_runtime(tiny, state_dir, run_dir, cni_dir)
    runtimes.append(runtime)
    overhead = runtime.config.vm.memory_overhead_mib
    resources = Resources(
        cpu_quota=150_000, cpu_period=100_000, cpu_shares=512,
        memory_limit_in_bytes=(256 + overhead) * MIB, cpuset_cpus="0-1", cpuset_mems="0",
    )
    # kubelet's pod cgroup (cgroupfs driver form): the VM's cgroup goes below it, so the pod's
    # accounting sees the VM.
    pod_cgroup = f"/{TEST_CGROUP_ROOT}/kubepods/burstable/pod-{os.getpid()}"
    spec = dataclasses.replace(sandbox_spec(tmp_path), cgroup_parent=pod_cgroup)
    sandbox_id = await runtime.run_sandbox(spec)
    container_id = await runtime.create_container(sandbox_id, container_spec(resources=resources))
    await runtime.start_container(container_id)
    await wait_for_log(runtime.container(container_id).log_path, tiny.ready_marker)
    container = runtime.containers[container_id]
    assert container.cgroup is not None and container.vm is not None
    assert container.vm.status.pid in container.cgroup.pids()
    assert container.cgroup.path.startswith(pod_cgroup.lstrip("/") + "/qmprt-")
    assert f":{pod_cgroup}/qmprt-" in Path(f"/proc/{container.vm.status.pid}/cgroup").read_text()

    # ceil(150000 / 100000) = 2 vCPUs; guest RAM = limit − overhead.
    nproc = await runtime.exec_sync(container_id, ["nproc"], 30)
    assert nproc.stdout.strip() == b"2"
    assert 256 - 48 <= await guest_memtotal_mib(runtime, container_id) <= 256

    limits = container.cgroup.read_limits()
    assert (limits.cpu_quota_us, limits.cpu_period_us) == (150_000, 100_000)
    assert limits.cpu_shares == 512 or container.cgroup.__class__.__name__ == "CgroupV2"
    assert limits.memory_bytes == (256 + overhead) * MIB
    assert limits.pids_max == runtime.config.cgroups.pids_max
    assert limits.cpuset_cpus == "0-1"

    # cpuset_cpus with as many CPUs as vCPUs: vCPU i on CPU i; cpuset_mems binds guest RAM.
    vm = container.vm
    assert vm.monitor is not None and vm.status.pid is not None
    vcpus = await vm.monitor.query_vcpus()
    assert {cpu.index: allowed_cpus(vm.status.pid, cpu.thread_id) for cpu in vcpus} == {0: "0", 1: "1"}
    memdevs = await vm.monitor.execute("query-memdev")
    assert [(m["host-nodes"], m["policy"]) for m in memdevs] == [([0], "bind")]

    # Live updates: CPU limits move; memory may grow; the vCPU count and a too-small limit are refused.
    await runtime.update_resources(container_id, Resources(cpu_quota=80_000, cpu_period=100_000, cpu_shares=256))
    limits = container.cgroup.read_limits()
    assert limits.cpu_quota_us == 80_000
    await runtime.update_resources(container_id, Resources(memory_limit_in_bytes=(300 + overhead) * MIB))
    assert container.cgroup.read_limits().memory_bytes == (300 + overhead) * MIB
    with pytest.raises(FailedPrecondition, match="fixed when it started"):
        await runtime.update_resources(container_id, Resources(cpu_quota=400_000, cpu_period=100_000))
    with pytest.raises(InvalidArgument, match="cannot hold"):
        await runtime.update_resources(container_id, Resources(memory_limit_in_bytes=100 * MIB))
    assert container.cgroup.read_limits().memory_bytes == (300 + overhead) * MIB

    # Shrinking goes through the balloon first; the cgroup limit follows.
    await runtime.update_resources(container_id, Resources(memory_limit_in_bytes=(192 + overhead) * MIB))
    # The runtime lowers the limit once the guest is within 1 MiB of the target (the guest's balloon
    # driver gives pages back in batches), so the figure read right after may still be above it.
    balloon = await vm.monitor.execute("query-balloon")
    assert 192 * MIB <= balloon["actual"] <= 193 * MIB
    assert container.cgroup.read_limits().memory_bytes == (192 + overhead) * MIB

    # A new cpuset moves every thread (the cgroup's cpuset follows).
    await runtime.update_resources(container_id, Resources(cpuset_cpus="1"))
    tasks = [int(t) for t in os.listdir(f"/proc/{vm.status.pid}/task")]
    assert {allowed_cpus(vm.status.pid, t) for t in tasks} == {"1"}
    assert container.cgroup.read_limits().cpuset_cpus == "1"

    stats = await runtime.container_stats(container_id)
    assert stats.memory_working_set_bytes and stats.memory_working_set_bytes < (300 + overhead) * MIB
    await runtime.remove_sandbox(sandbox_id)


async def test_runaway_vm_is_oom_killed_alone(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    state_dir, run_dir, cni_dir = runtime_dirs
    # A deliberately low overhead: the emulator's own memory does not fit the limit once the guest
    # fills its RAM, which is what a runaway VM looks like to the host.
    runtime = await open_runtime(tiny, state_dir, run_dir, cni_dir, memory_overhead_mib=16)
    runtimes.append(runtime)
    victim_pod = await runtime.run_sandbox(sandbox_spec(tmp_path, "victim"))
    bystander_pod = await runtime.run_sandbox(sandbox_spec(tmp_path, "bystander"))
    victim = await runtime.create_container(
        victim_pod, container_spec(resources=Resources(memory_limit_in_bytes=272 * MIB))
    )
    bystander = await runtime.create_container(bystander_pod, container_spec(metadata=ContainerMetadata(name="calm")))
    for container_id in (victim, bystander):
        await runtime.start_container(container_id)
    for container_id in (victim, bystander):
        await wait_for_log(runtime.container(container_id).log_path, tiny.ready_marker)

    fill = "mkdir -p /t && mount -t tmpfs -o size=230m tmpfs /t && dd if=/dev/zero of=/t/fill bs=1M count=220"
    await runtime.exec_sync(victim, ["sh", "-c", f"({fill}) >/dev/null 2>&1 &"], 30)
    deadline = asyncio.get_running_loop().time() + 120
    while runtime.container(victim).status.state != ContainerState.EXITED:
        assert asyncio.get_running_loop().time() < deadline, "the runaway VM was not killed"
        await asyncio.sleep(0.2)
    status = runtime.container(victim).status
    assert (status.exit_code, status.reason) == (137, "OOMKilled"), status
    assert "memory limit" in status.message

    # The neighbour never noticed.
    assert runtime.container(bystander).status.state == ContainerState.RUNNING
    uname = await runtime.exec_sync(bystander, ["uname", "-r"], 30)
    assert uname.stdout.decode().strip() == tiny.kernel_version
    for pod in (victim_pod, bystander_pod):
        await runtime.remove_sandbox(pod)
