"""How big a container's VM is, from the container's resources.

- vCPUs = ceil(cpu_quota / cpu_period) when both are set, else the configured default; at least 1,
  at most ``MAX_VCPUS``.
- Guest RAM = memory limit − the per-VM overhead (``vm.memory_overhead_mib``: QEMU's own memory, its
  TCG translation cache, the console and agent buffers) when a limit is set; else the configured
  default. A limit that cannot hold the overhead plus ``MIN_GUEST_MIB`` is refused, and so is one
  above the host's memory.
- The cgroup memory limit is the container's limit itself (guest + overhead), so a runaway emulator
  is OOM-killed inside its own budget.
- Hugepages (a ``hugepages-2Mi``/``-1Gi`` limit): guest RAM is the hugepage limit and comes from
  hugetlbfs, which the kernel accounts apart from memory; the memory limit then only has to hold the
  overhead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import psutil

from qmprt.errors import InvalidArgument
from qmprt.pod.specs import Resources

MIB = 1 << 20
MAX_VCPUS = 255
MIN_GUEST_MIB = 64


HUGEPAGE_SIZES_KIB = {"2MB": 2048, "2Mi": 2048, "1GB": 1 << 20, "1Gi": 1 << 20}


@dataclass(frozen=True)
class VMSize:
    vcpus: int
    guest_memory_mib: int
    cgroup_memory_bytes: int | None  # None: no memory limit was asked for
    hugepage_page_kib: int | None = None  # guest RAM from hugepages of this size


def _hugepages(resources: Resources) -> tuple[int, int] | None:
    """(page size in KiB, bytes) of the first non-zero hugepage limit."""
    for page_size, limit in resources.hugepage_limits:
        if limit > 0:
            if page_size not in HUGEPAGE_SIZES_KIB:
                raise InvalidArgument(f"hugepage size {page_size!r} is not one of {', '.join(HUGEPAGE_SIZES_KIB)}")
            return HUGEPAGE_SIZES_KIB[page_size], limit
    return None


def size_vm(
    resources: Resources | None,
    default_cpus: int,
    default_memory_mib: int,
    overhead_mib: int,
    host_memory_bytes: int | None = None,
) -> VMSize:
    resources = resources or Resources()
    host_memory = host_memory_bytes if host_memory_bytes is not None else psutil.virtual_memory().total
    if resources.cpu_quota < -1 or resources.cpu_period < 0:
        raise InvalidArgument("cpu_quota and cpu_period must not be negative")
    if resources.cpu_quota > 0 and resources.cpu_period > 0:
        vcpus = math.ceil(resources.cpu_quota / resources.cpu_period)
    else:
        vcpus = default_cpus
    if vcpus > MAX_VCPUS:
        raise InvalidArgument(
            f"cpu_quota/cpu_period asks for {vcpus} vCPUs; a VM pod can have at most {MAX_VCPUS}"
        )
    limit = resources.memory_limit_in_bytes
    if limit < 0:
        raise InvalidArgument("memory_limit_in_bytes must not be negative")
    hugepages = _hugepages(resources)
    if hugepages is not None:
        page_kib, hugepage_bytes = hugepages
        guest_mib = hugepage_bytes // MIB
        if guest_mib < MIN_GUEST_MIB:
            raise InvalidArgument(f"the hugepage limit gives the guest {guest_mib} MiB; it needs {MIN_GUEST_MIB}")
        if limit and limit // MIB < overhead_mib:
            raise InvalidArgument(
                f"memory limit {limit // MIB} MiB cannot hold the per-VM overhead of {overhead_mib} MiB "
                "(guest RAM comes from hugepages, apart from it)"
            )
        return VMSize(max(1, vcpus), guest_mib, limit or None, page_kib)
    if limit == 0:
        return VMSize(max(1, vcpus), default_memory_mib, None)
    if limit > host_memory:
        raise InvalidArgument(
            f"memory limit {limit // MIB} MiB is more than this node has ({host_memory // MIB} MiB)"
        )
    guest_mib = limit // MIB - overhead_mib
    if guest_mib < MIN_GUEST_MIB:
        raise InvalidArgument(
            f"memory limit {limit // MIB} MiB cannot hold the per-VM overhead of {overhead_mib} MiB "
            f"plus the smallest guest ({MIN_GUEST_MIB} MiB): ask for at least "
            f"{overhead_mib + MIN_GUEST_MIB} MiB"
        )
    return VMSize(max(1, vcpus), guest_mib, limit)
