"""Guest memory layouts: splits, host-node binding, and what a host can give (on a fake sysfs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qmprt.errors import InvalidArgument, ResourceExhausted
from qmprt.vm.config import DiskConfig, VMConfig
from qmprt.vm.numa import HugepageConfig, MemoryPlan, check_host, hugetlbfs_page_kib, plan_memory


def _plan(**fields: object) -> MemoryPlan:
    arguments: dict[str, object] = {"memory_mib": 512, "cpus": 2, "machine": "q35", **fields}
    return plan_memory(**arguments)  # type: ignore[arg-type]


def test_one_node_is_one_backend_bound_to_every_host_node() -> None:
    plan = _plan(host_nodes=(0, 1))
    assert plan.nodes == ()
    assert [(b.id, b.size_mib, b.host_nodes) for b in plan.backends] == [("mem0", 512, (0, 1))]


def test_vcpus_and_ram_split_as_evenly_as_possible() -> None:
    plan = _plan(memory_mib=1001, cpus=5, guest_numa_nodes=3)
    assert [(n.first_cpu, n.last_cpu, n.memdev) for n in plan.nodes] == [(0, 1, "mem0"), (2, 3, "mem1"), (4, 4, "mem2")]
    assert [b.size_mib for b in plan.backends] == [334, 334, 333]


@pytest.mark.parametrize(
    ("guest_nodes", "host_nodes", "expected"),
    [
        (3, (0, 1), [(0,), (1,), (0,)]),
        (2, (0,), [(0,), (0,)]),
        (2, (0, 1, 2, 3), [(0, 2), (1, 3)]),
        (2, (), [(), ()]),
    ],
    ids=["round-robin", "one-host-node", "more-host-nodes", "unbound"],
)
def test_guest_nodes_map_to_host_nodes(
    guest_nodes: int, host_nodes: tuple[int, ...], expected: list[tuple[int, ...]]
) -> None:
    plan = _plan(cpus=4, guest_numa_nodes=guest_nodes, host_nodes=host_nodes)
    assert [backend.host_nodes for backend in plan.backends] == expected


def test_hugepages_split_in_whole_pages() -> None:
    plan = _plan(memory_mib=32, cpus=2, guest_numa_nodes=1, hugepages=HugepageConfig())
    assert plan.backends[0].kind == "file" and plan.backends[0].prealloc
    plan = _plan(memory_mib=70, cpus=2, guest_numa_nodes=2, hugepages=HugepageConfig())
    assert [b.size_mib for b in plan.backends] == [36, 34]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"machine": "microvm", "guest_numa_nodes": 2}, "microvm cannot show the guest NUMA nodes"),
        ({"guest_numa_nodes": 3}, "3 guest NUMA nodes need at least as many vCPUs"),
        ({"guest_numa_nodes": 0}, "at least one NUMA node"),
        ({"host_nodes": (0, 0)}, "distinct"),
        ({"host_nodes": (-1,)}, "not negative"),
        ({"memory_mib": 513, "hugepages": HugepageConfig()}, "513 MiB .* 2 MiB hugepages"),
        ({"memory_mib": 24, "guest_numa_nodes": 2}, "leaves a node with 12 MiB"),
    ],
    ids=["microvm-numa", "more-nodes-than-vcpus", "no-nodes", "duplicate-host-node", "negative-host-node",
         "partial-hugepage", "tiny-node"],
)
def test_impossible_layouts_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _plan(**fields)


def test_hugepage_config_is_checked() -> None:
    with pytest.raises(InvalidArgument, match="4096 KiB do not exist"):
        HugepageConfig(page_size_kib=4096)
    with pytest.raises(InvalidArgument, match="absolute path"):
        HugepageConfig(mount="hugepages")


def test_vm_config_refuses_numa_on_microvm() -> None:
    with pytest.raises(InvalidArgument, match="microvm"):
        VMConfig(vm_id="c", root_disk=DiskConfig("/o", "qcow2"), machine="microvm", cpus=2, guest_numa_nodes=2)


# -- the host, as sysfs and /proc/self/mounts show it --------------------------------------------


def _fake_host(
    root: Path, *, nodes: str = "0", free: dict[int, int] | None = None, mounts: str = ""
) -> tuple[Path, Path]:
    sys_root = root / "sys"
    (sys_root / "devices/system/node").mkdir(parents=True)
    (sys_root / "devices/system/node/has_memory").write_text(nodes + "\n")
    pool = sys_root / "kernel/mm/hugepages/hugepages-2048kB"
    pool.mkdir(parents=True)
    free = free or {}
    (pool / "free_hugepages").write_text(f"{sum(free.values())}\n")
    (pool / "resv_hugepages").write_text("0\n")
    for node, count in free.items():
        node_pool = sys_root / f"devices/system/node/node{node}/hugepages/hugepages-2048kB"
        node_pool.mkdir(parents=True)
        (node_pool / "free_hugepages").write_text(f"{count}\n")
    mounts_file = root / "mounts"
    mounts_file.write_text("proc /proc proc rw 0 0\n" + mounts)
    return sys_root, mounts_file


HUGETLBFS = "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"


def test_host_check_accepts_what_the_host_has(tmp_path: Path) -> None:
    sys_root, mounts = _fake_host(tmp_path, free={0: 64}, mounts=HUGETLBFS)
    check_host(_plan(memory_mib=128, host_nodes=(0,), hugepages=HugepageConfig()), sys_root, mounts)
    check_host(_plan(memory_mib=128, hugepages=HugepageConfig()), sys_root, mounts)


def test_host_check_names_a_missing_node(tmp_path: Path) -> None:
    sys_root, mounts = _fake_host(tmp_path)
    with pytest.raises(InvalidArgument, match=r"host NUMA node 1-2 does not exist .*\(nodes with memory: 0\)"):
        check_host(_plan(cpus=2, guest_numa_nodes=2, host_nodes=(0, 1, 2)), sys_root, mounts)


@pytest.mark.parametrize(
    ("mounts", "free", "error", "message"),
    [
        ("", {0: 64}, InvalidArgument, "no hugetlbfs is mounted at /dev/hugepages"),
        (HUGETLBFS.replace("pagesize=2M", "pagesize=1024M"), {0: 64}, InvalidArgument, "1048576 KiB pages"),
        ("tmpfs /dev/hugepages tmpfs rw 0 0\n", {0: 64}, InvalidArgument, "no hugetlbfs"),
        (HUGETLBFS, {0: 63}, ResourceExhausted, "needs 64 hugepages of 2048 KiB on host node 0, 63 are free"),
    ],
    ids=["not-mounted", "other-page-size", "not-hugetlbfs", "too-few-free"],
)
def test_host_check_refuses_unusable_hugepages(
    tmp_path: Path, mounts: str, free: dict[int, int], error: type[Exception], message: str
) -> None:
    sys_root, mounts_file = _fake_host(tmp_path, free=free, mounts=mounts)
    with pytest.raises(error, match=message):
        check_host(_plan(memory_mib=128, host_nodes=(0,), hugepages=HugepageConfig()), sys_root, mounts_file)


def test_hugetlbfs_mount_points_with_spaces(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("none /mnt/huge\\040pages hugetlbfs rw,pagesize=1G 0 0\n")
    assert hugetlbfs_page_kib("/mnt/huge pages", mounts, default_kib=2048) == 1024 * 1024
