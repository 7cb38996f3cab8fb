"""Changing a running VM's resources, and pinning its threads.

CPU quota/period/shares and cpusets go to the VM's cgroup. A memory limit moves the cgroup limit and
the guest's balloon together (guest RAM target = limit − overhead, at most the RAM it booted with),
shrinking the guest before the cgroup and growing the cgroup before the guest. The vCPU count is
fixed at start. Threads may only move within the cgroup's cpuset, so a new cpuset widens the cgroup,
pins, then narrows it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from qmprt import cgroups
from qmprt.errors import FailedPrecondition, InvalidArgument, Unavailable, VMError
from qmprt.pod.specs import Resources
from qmprt.pod.live import Container
from qmprt.pod.sizing import MIN_GUEST_MIB
from qmprt.vm.machine import VM
from qmprt.vm.pinning import format_id_list, parse_cpuset

log = logging.getLogger(__name__)

BALLOON_WAIT_SECONDS = 10.0


async def pin(container: Container, cpuset: str | None = None) -> None:
    """Pin the VM's threads to ``cpuset`` (default: the container's ``cpuset_cpus``, if any)."""
    cpuset = cpuset or (container.spec.resources or Resources()).cpuset_cpus
    if not cpuset or container.vm is None:
        return
    report = await container.vm.pin(cpuset)
    log.info("container %s: %s (%.1f ms)", container.id[:12], report.summary(), report.seconds * 1000)


async def update(container: Container, vm: VM, resources: Resources, overhead_mib: int) -> None:
    """Apply ``resources`` to a running VM, in the order the module docstring gives."""
    cgroup = container.cgroup
    if cgroup is None or vm.monitor is None:
        raise FailedPrecondition(f"container {container.id[:12]} has no cgroup or monitor")
    if resources.cpu_quota > 0 and resources.cpu_period > 0:
        wanted_vcpus = -(-resources.cpu_quota // resources.cpu_period)
        if wanted_vcpus > container.record.vcpus:
            raise FailedPrecondition(
                f"the VM of container {container.id[:12]} has {container.record.vcpus} vCPUs, fixed when it "
                f"started; a quota for {wanted_vcpus} CPUs needs the pod to be recreated"
            )
    balloon_target: int | None = None
    if resources.memory_limit_in_bytes:
        guest_mib = (resources.memory_limit_in_bytes >> 20) - overhead_mib
        if guest_mib < MIN_GUEST_MIB:
            raise InvalidArgument(
                f"memory limit {resources.memory_limit_in_bytes >> 20} MiB cannot hold the VM's overhead "
                f"({overhead_mib} MiB) plus the smallest guest ({MIN_GUEST_MIB} MiB)"
            )
        balloon_target = min(guest_mib, container.record.guest_memory_mib) << 20
    limits = cgroups.CgroupLimits(
        cpu_quota_us=resources.cpu_quota if resources.cpu_quota else None,
        cpu_period_us=resources.cpu_period or None,
        cpu_shares=resources.cpu_shares or None,
        cpuset_mems=resources.cpuset_mems or None,
    )
    memory_limit = cgroups.CgroupLimits(memory_bytes=resources.memory_limit_in_bytes or None)
    current = cgroup.read_limits().memory_bytes
    growing = current is None or current == cgroups.UNLIMITED or resources.memory_limit_in_bytes >= current
    try:
        if resources.memory_limit_in_bytes and growing:
            cgroup.set_limits(memory_limit)
        if balloon_target is not None:
            await _balloon(container, vm, balloon_target)
        if resources.memory_limit_in_bytes and not growing:
            cgroup.set_limits(memory_limit)
        cgroup.set_limits(limits)
        if resources.cpuset_cpus:
            # The threads may only move within the cgroup's cpuset: widen it, pin, then narrow it.
            new_cpus = parse_cpuset(resources.cpuset_cpus)
            old_cpuset = cgroup.read_limits().cpuset_cpus
            both = set(new_cpus) | set(parse_cpuset(old_cpuset) if old_cpuset else ())
            cgroup.set_limits(cgroups.CgroupLimits(cpuset_cpus=format_id_list(both)))
            await pin(container, resources.cpuset_cpus)
            cgroup.set_limits(cgroups.CgroupLimits(cpuset_cpus=resources.cpuset_cpus))
    except (ValueError, cgroups.CgroupError) as err:
        raise InvalidArgument(f"container resources cannot be applied: {err}") from err
    log.info("container %s: resources updated (%s)", container.id[:12], resources)

async def _balloon(container: Container, vm: VM, target_bytes: int) -> None:
    """Move the guest's balloon to ``target_bytes`` of RAM; a VM without one can only grow."""
    assert vm.monitor is not None
    try:
        current = int((await vm.monitor.execute("query-balloon"))["actual"])
    except VMError as err:
        if target_bytes < container.record.guest_memory_mib << 20:
            raise FailedPrecondition(
                f"the VM of container {container.id[:12]} has no memory balloon, so its guest RAM "
                "cannot shrink while it runs"
            ) from err
        return
    if current == target_bytes:
        return
    await vm.monitor.execute("balloon", {"value": target_bytes})
    if target_bytes > current:
        return
    # Lower the cgroup limit only once the guest has given the memory back.
    deadline = time.monotonic() + BALLOON_WAIT_SECONDS
    while int((await vm.monitor.execute("query-balloon"))["actual"]) > target_bytes + (1 << 20):
        if time.monotonic() > deadline:
            raise Unavailable(
                f"the guest of container {container.id[:12]} did not release memory down to "
                f"{target_bytes >> 20} MiB within {BALLOON_WAIT_SECONDS:.0f} s; the memory limit is unchanged"
            )
        await asyncio.sleep(0.05)
