"""Finding the cgroup layout of this machine from /proc/self/mountinfo.

Pure v2: cgroup2 is mounted at the root itself. v1 (including hybrid machines, where a cgroup2 mount
at ``<root>/unified`` carries no controllers qmprt uses): the v1 hierarchies mounted under the root.
"""

from __future__ import annotations

import dataclasses
import os
import re

from qmprt.cgroups.errors import CgroupUnavailable
from qmprt.cgroups.files import DirectoryOps
from qmprt.cgroups.model import CgroupDriver
from qmprt.cgroups.v1 import CgroupV1Driver
from qmprt.cgroups.v2 import CgroupV2Driver

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
MOUNTINFO_PATH = "/proc/self/mountinfo"

V1_CONTROLLER_NAMES = frozenset(
    {
        "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb",
        "memory", "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma",
    }
)  # fmt: skip

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclasses.dataclass(frozen=True)
class CgroupMount:
    """One cgroup or cgroup2 line of mountinfo."""

    mount_point: str
    filesystem_type: str
    """``cgroup`` (v1) or ``cgroup2``."""
    controllers: frozenset[str]
    """v1 controllers of the hierarchy (from the super options); empty for cgroup2."""


def _unescape(mountinfo_field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (``\\040``)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), mountinfo_field)


def parse_mountinfo(mountinfo: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts in ``mountinfo`` (proc(5) format), in mount order."""
    mounts: list[CgroupMount] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator_index = fields.index("-")
        if len(fields) < separator_index + 4 or separator_index < 5:
            continue
        filesystem_type = fields[separator_index + 1]
        if filesystem_type not in ("cgroup", "cgroup2"):
            continue
        super_options = fields[separator_index + 3].split(",")
        controllers = (
            frozenset(option for option in super_options if option in V1_CONTROLLER_NAMES)
            if filesystem_type == "cgroup"
            else frozenset()
        )
        mounts.append(CgroupMount(_unescape(fields[4]), filesystem_type, controllers))
    return mounts


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def detect(
    root: str = DEFAULT_CGROUP_ROOT,
    mountinfo: str | None = None,
    directory_ops: DirectoryOps | None = None,
) -> CgroupDriver:
    """The driver for the cgroup filesystem(s) mounted at or under ``root``.

    ``mountinfo`` defaults to /proc/self/mountinfo; tests pass their own text describing a fake tree.
    Raises ``CgroupUnavailable`` when neither layout is usable.
    """
    normalized_root = os.path.normpath(root)
    if mountinfo is None:
        try:
            with open(MOUNTINFO_PATH, encoding="utf-8", errors="surrogateescape") as mountinfo_file:
                mountinfo = mountinfo_file.read()
        except OSError as err:
            raise CgroupUnavailable(f"cannot read {MOUNTINFO_PATH}: {err.strerror}") from err
    mounts = [mount for mount in parse_mountinfo(mountinfo) if _is_under(mount.mount_point, normalized_root)]

    # A later mount at the same point hides the earlier one, so the last mount at the root decides.
    root_mounts = [mount for mount in mounts if mount.mount_point == normalized_root]
    if root_mounts and root_mounts[-1].filesystem_type == "cgroup2":
        return CgroupV2Driver(normalized_root, directory_ops)

    controller_mounts: dict[str, str] = {}
    for mount in mounts:
        if mount.filesystem_type != "cgroup":
            continue
        for controller in mount.controllers:
            controller_mounts.setdefault(controller, mount.mount_point)
    if not controller_mounts:
        raise CgroupUnavailable(f"no cgroup v1 hierarchy or cgroup2 filesystem mounted at {normalized_root}")
    return CgroupV1Driver(controller_mounts, directory_ops)  # raises if a required hierarchy is missing
