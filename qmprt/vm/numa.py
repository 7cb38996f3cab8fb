"""Where guest RAM comes from: memory backends, the guest's NUMA nodes, host-node binding, hugepages.

Guest RAM always comes from explicit memory backends (``mem0``, ``mem1`` …), so it can be bound:

- one guest node (the default): one backend of all the RAM, the machine's ``memory-backend``, bound to
  every host node in ``host_nodes`` (the pod's ``cpuset_mems``);
- N guest nodes: N backends and ``-numa node,nodeid=i,cpus=a-b,memdev=memI``. vCPUs are split into
  contiguous ranges and RAM into equal parts (both as evenly as possible, the first nodes taking the
  remainder). Guest node *i* is bound to host node ``host_nodes[i % len(host_nodes)]`` when there are
  fewer host nodes than guest nodes, and to every ``host_nodes[j]`` with ``j % N == i`` otherwise.

RAM comes from ``memory-backend-ram``; from ``memory-backend-file`` on a hugetlbfs mount (preallocated,
so a shortage of hugepages fails the start instead of killing the guest later) when hugepages are asked
for; from ``memory-backend-memfd`` with ``share=on`` when another process must map guest RAM (virtiofsd).
``plan_memory`` checks what can be checked anywhere; ``check_host`` what depends on this host.
microvm builds no SRAT table, so it refuses guest NUMA nodes (binding its RAM to host nodes works).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qmprt.errors import InvalidArgument, ResourceExhausted
from qmprt.vm.devices import MemoryBackend, MemoryBackendKind, NumaNode
from qmprt.vm.pinning import format_id_list, parse_id_list

MIN_NODE_MIB = 16  # Linux drops NUMA nodes smaller than 4 MiB; anything this small is a mistake
HUGEPAGE_SIZES_KIB = (2048, 1024 * 1024)  # what x86-64 offers


@dataclass(frozen=True)
class HugepageConfig:
    """Back guest RAM with hugepages of ``page_size_kib`` from the hugetlbfs mounted at ``mount``."""

    page_size_kib: int = 2048
    mount: str = "/dev/hugepages"
    prealloc: bool = True

    def __post_init__(self) -> None:
        if self.page_size_kib not in HUGEPAGE_SIZES_KIB:
            raise InvalidArgument(
                f"hugepages of {self.page_size_kib} KiB do not exist on x86-64 (2048 or 1048576 KiB)"
            )
        if not os.path.isabs(self.mount):
            raise InvalidArgument(f"the hugetlbfs mount {self.mount!r} must be an absolute path")

    @property
    def page_mib(self) -> int:
        return self.page_size_kib // 1024


@dataclass(frozen=True)
class MemoryPlan:
    """The backends holding guest RAM and the guest NUMA nodes (none: one node, the machine's backend)."""

    backends: tuple[MemoryBackend, ...]
    nodes: tuple[NumaNode, ...]
    hugepages: HugepageConfig | None = None


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` as equal as integers allow, the first parts one larger."""
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def host_nodes_of(guest_node: int, guest_nodes: int, host_nodes: Sequence[int]) -> tuple[int, ...]:
    if not host_nodes:
        return ()
    if len(host_nodes) < guest_nodes:
        return (host_nodes[guest_node % len(host_nodes)],)
    return tuple(node for index, node in enumerate(host_nodes) if index % guest_nodes == guest_node)


def plan_memory(
    *,
    memory_mib: int,
    cpus: int,
    machine: str,
    guest_numa_nodes: int = 1,
    host_nodes: Sequence[int] = (),
    hugepages: HugepageConfig | None = None,
    shared: bool = False,
) -> MemoryPlan:
    """The memory layout of a VM; raises ``InvalidArgument`` for a layout no host could give."""
    if guest_numa_nodes < 1:
        raise InvalidArgument(f"a guest has at least one NUMA node, not {guest_numa_nodes}")
    if guest_numa_nodes > 1 and machine == "microvm":
        raise InvalidArgument("microvm cannot show the guest NUMA nodes (it has no SRAT table): use q35")
    if cpus >= 1 and guest_numa_nodes > cpus:
        raise InvalidArgument(f"{guest_numa_nodes} guest NUMA nodes need at least as many vCPUs, not {cpus}")
    if any(node < 0 for node in host_nodes) or len(set(host_nodes)) != len(host_nodes):
        raise InvalidArgument(f"host NUMA nodes {list(host_nodes)} must be distinct and not negative")
    granule_mib = hugepages.page_mib if hugepages is not None else 1
    if memory_mib % granule_mib:
        raise InvalidArgument(f"{memory_mib} MiB of guest RAM is not a whole number of {granule_mib} MiB hugepages")
    node_mibs = [units * granule_mib for units in split_evenly(memory_mib // granule_mib, guest_numa_nodes)]
    if min(node_mibs) < MIN_NODE_MIB:
        raise InvalidArgument(
            f"{memory_mib} MiB split over {guest_numa_nodes} guest NUMA nodes leaves a node with "
            f"{min(node_mibs)} MiB (at least {MIN_NODE_MIB} MiB each)"
        )
    kind: MemoryBackendKind = "file" if hugepages is not None else ("memfd" if shared else "ram")
    backends = tuple(
        MemoryBackend(
            id=f"mem{index}",
            size_mib=size_mib,
            kind=kind,
            host_nodes=host_nodes_of(index, guest_numa_nodes, host_nodes),
            mem_path=hugepages.mount if hugepages is not None else None,
            share=shared,
            prealloc=hugepages is not None and hugepages.prealloc,
        )
        for index, size_mib in enumerate(node_mibs)
    )
    if guest_numa_nodes == 1:
        return MemoryPlan(backends, (), hugepages)
    nodes = []
    first_cpu = 0
    for index, count in enumerate(split_evenly(cpus, guest_numa_nodes)):
        nodes.append(NumaNode(index, first_cpu, first_cpu + count - 1, backends[index].id))
        first_cpu += count
    return MemoryPlan(backends, tuple(nodes), hugepages)


# -- what this host has ----------------------------------------------------------------------------


def host_memory_nodes(sys_root: Path = Path("/sys")) -> tuple[int, ...]:
    """Host NUMA nodes that have memory (a kernel without NUMA has just node 0)."""
    node_dir = sys_root / "devices/system/node"
    for name in ("has_memory", "online"):
        try:
            return parse_id_list((node_dir / name).read_text(), "host NUMA node")
        except FileNotFoundError:
            continue
    return (0,)


def _unescape_mount_field(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _size_kib(text: str) -> int:
    units = {"K": 1, "M": 1024, "G": 1024 * 1024}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text) // 1024


def hugetlbfs_page_kib(mount: str, mounts_file: Path, default_kib: int) -> int | None:
    """The page size of the hugetlbfs mounted at ``mount``, or None when no hugetlbfs is mounted there."""
    wanted = os.path.realpath(mount)
    found: int | None = None
    for line in mounts_file.read_text().splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != "hugetlbfs" or _unescape_mount_field(fields[1]) != wanted:
            continue
        found = default_kib  # the last mount on a path hides the earlier ones
        for option in fields[3].split(","):
            if option.startswith("pagesize="):
                found = _size_kib(option.removeprefix("pagesize="))
    return found


def _read_count(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        return 0


def free_hugepages(page_size_kib: int, nodes: Sequence[int], sys_root: Path = Path("/sys")) -> int:
    """Hugepages of that size nobody holds or has reserved: on ``nodes``, or on the whole host if empty."""
    size_dir = f"hugepages/hugepages-{page_size_kib}kB"
    if not nodes:
        pool = sys_root / "kernel/mm" / size_dir
        return _read_count(pool / "free_hugepages") - _read_count(pool / "resv_hugepages")
    node_dir = sys_root / "devices/system/node"
    return sum(_read_count(node_dir / f"node{node}" / size_dir / "free_hugepages") for node in nodes)


def check_host(
    plan: MemoryPlan,
    sys_root: Path = Path("/sys"),
    mounts_file: Path = Path("/proc/self/mounts"),
) -> None:
    """Refuse a plan this host cannot give: unknown host nodes and unusable hugepages raise
    ``InvalidArgument``, too few free hugepages ``ResourceExhausted`` (a snapshot: QEMU's preallocation
    is the real test)."""
    available = host_memory_nodes(sys_root)
    unknown = {node for backend in plan.backends for node in backend.host_nodes} - set(available)
    if unknown:
        raise InvalidArgument(
            f"host NUMA node {format_id_list(unknown)} does not exist or has no memory here "
            f"(nodes with memory: {format_id_list(available)})"
        )
    hugepages = plan.hugepages
    if hugepages is None:
        return
    size_kib = hugepages.page_size_kib
    if not (sys_root / f"kernel/mm/hugepages/hugepages-{size_kib}kB").is_dir():
        raise InvalidArgument(f"this host offers no hugepages of {size_kib} KiB")
    mounted_kib = hugetlbfs_page_kib(hugepages.mount, mounts_file, default_kib=2048)
    if mounted_kib is None:
        raise InvalidArgument(f"no hugetlbfs is mounted at {hugepages.mount}")
    if mounted_kib != size_kib:
        raise InvalidArgument(f"the hugetlbfs at {hugepages.mount} has {mounted_kib} KiB pages, not {size_kib} KiB")
    needed: dict[tuple[int, ...], int] = {}
    for backend in plan.backends:
        needed[backend.host_nodes] = needed.get(backend.host_nodes, 0) + backend.size_mib * 1024 // size_kib
    for nodes, pages in needed.items():
        free = free_hugepages(size_kib, nodes, sys_root)
        if free < pages:
            where = f"on host node {format_id_list(nodes)}" if nodes else "on this host"
            raise ResourceExhausted(f"guest RAM needs {pages} hugepages of {size_kib} KiB {where}, {free} are free")
