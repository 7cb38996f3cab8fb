import pytest

from qmprt.errors import InvalidArgument
from qmprt.pod.specs import Resources
from qmprt.pod.sizing import MIB, size_vm

HOST = 8 << 30


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (None, (1, 128, None)),
        (Resources(cpu_quota=150000, cpu_period=100000), (2, 128, None)),
        (Resources(cpu_quota=-1, cpu_period=100000), (1, 128, None)),
        (Resources(memory_limit_in_bytes=512 * MIB), (1, 352, 512 * MIB)),
    ],
    ids=["defaults", "quota-rounds-up", "unlimited-quota", "memory-limit"],
)
def test_size(resources, expected) -> None:
    size = size_vm(resources, 1, 128, 160, HOST)
    assert (size.vcpus, size.guest_memory_mib, size.cgroup_memory_bytes) == expected


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (Resources(memory_limit_in_bytes=100 * MIB), "at least 224 MiB"),
        (Resources(memory_limit_in_bytes=1 << 50), "more than this node has"),
        (Resources(cpu_quota=100_000_000, cpu_period=100_000), "at most 255"),
        (Resources(memory_limit_in_bytes=-5), "negative"),
    ],
    ids=["too-small", "too-big", "too-many-cpus", "negative"],
)
def test_absurd_resources(resources, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        size_vm(resources, 1, 128, 160, HOST)


def test_hugepages_back_guest_ram() -> None:
    resources = Resources(hugepage_limits=(("2MB", 256 * MIB),), memory_limit_in_bytes=200 * MIB)
    size = size_vm(resources, 1, 128, 160, HOST)
    assert (size.guest_memory_mib, size.cgroup_memory_bytes, size.hugepage_page_kib) == (256, 200 * MIB, 2048)
    with pytest.raises(InvalidArgument, match="overhead"):
        size_vm(Resources(hugepage_limits=(("2MB", 256 * MIB),), memory_limit_in_bytes=100 * MIB), 1, 128, 160, HOST)
