"""cgroup v1 and v2 behind one small interface: create, limits, cpuset, stats, kill, delete.

A mechanism: no grpc or protobuf here. ``detect()`` picks the driver for this machine; both drivers
hand out objects satisfying the ``Cgroup`` protocol. Paths are relative to the hierarchy root;
``parent_to_path`` turns kubelet's ``cgroup_parent`` (cgroupfs or systemd form) into one.
"""

from qmprt.cgroups.counters import CgroupCounters, DeviceIO
from qmprt.cgroups.detect import CgroupMount, detect, parse_mountinfo
from qmprt.cgroups.errors import CgroupBusy, CgroupError, CgroupNotFound, CgroupUnavailable
from qmprt.cgroups.files import DirectoryOps, KernelDirectoryOps
from qmprt.cgroups.model import (
    UNLIMITED,
    Cgroup,
    CgroupDriver,
    CgroupLimits,
    CgroupStats,
    cpu_shares_to_weight,
    cpu_weight_to_shares,
)
from qmprt.cgroups.paths import expand_slice, normalize_cgroup_path, parent_to_path
from qmprt.cgroups.v1 import CgroupV1, CgroupV1Driver
from qmprt.cgroups.v2 import CgroupV2, CgroupV2Driver

__all__ = [
    "UNLIMITED",
    "Cgroup",
    "CgroupBusy",
    "CgroupCounters",
    "CgroupDriver",
    "CgroupError",
    "CgroupLimits",
    "CgroupMount",
    "CgroupNotFound",
    "CgroupStats",
    "CgroupUnavailable",
    "CgroupV1",
    "CgroupV1Driver",
    "CgroupV2",
    "CgroupV2Driver",
    "DeviceIO",
    "DirectoryOps",
    "KernelDirectoryOps",
    "cpu_shares_to_weight",
    "cpu_weight_to_shares",
    "detect",
    "expand_slice",
    "normalize_cgroup_path",
    "parent_to_path",
    "parse_mountinfo",
]
