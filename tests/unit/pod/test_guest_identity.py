"""Each VM's QEMU gets a uid of its own from the configured range."""

from __future__ import annotations

import pytest

from qmprt.config import VMDefaults
from qmprt.errors import ResourceExhausted
from qmprt.pod.guest import allocate_vm_uid


def test_the_lowest_free_uid_is_taken() -> None:
    defaults = VMDefaults(uid_base=5000, uid_count=4)
    assert allocate_vm_uid(defaults, []) == 5000
    assert allocate_vm_uid(defaults, [5000, None, 5002]) == 5001
    assert allocate_vm_uid(defaults, [5001, 5000, 5002]) == 5003
    # Ids outside the range (another configuration's) do not count.
    assert allocate_vm_uid(defaults, [4999, 6000]) == 5000


def test_a_full_range_is_resource_exhausted() -> None:
    defaults = VMDefaults(uid_base=5000, uid_count=2)
    with pytest.raises(ResourceExhausted, match="all 2 VM user ids"):
        allocate_vm_uid(defaults, [5000, 5001])


def test_root_stays_when_unprivileged_is_off() -> None:
    assert allocate_vm_uid(VMDefaults(unprivileged=False), []) is None
