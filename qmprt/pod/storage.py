"""A container's storage requests, checked before anything is created.

``ContainerConfig.mounts`` (kubelet's ConfigMaps, Secrets, hostPaths… as host paths) and
``ContainerConfig.devices`` (raw block devices) must name paths that exist; the guest paths must be
absolute. Refusals are INVALID_ARGUMENT with the offending path named.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from qmprt.errors import InvalidArgument
from qmprt.pod.model import DeviceSpec, MountSpec


def check_mounts(mounts: Sequence[MountSpec]) -> None:
    seen: set[str] = set()
    for mount in mounts:
        if not os.path.isabs(mount.container_path):
            raise InvalidArgument(f"mount container_path {mount.container_path!r} must be an absolute guest path")
        if mount.container_path in seen:
            raise InvalidArgument(f"two mounts at {mount.container_path!r}")
        seen.add(mount.container_path)
        if not mount.host_path or not os.path.exists(mount.host_path):
            raise InvalidArgument(
                f"mount at {mount.container_path!r}: host path {mount.host_path!r} does not exist on this node"
            )


def check_devices(devices: Sequence[DeviceSpec]) -> None:
    for device in devices:
        try:
            mode = os.stat(device.host_path).st_mode
        except OSError as err:
            raise InvalidArgument(f"device {device.host_path!r} cannot be used: {err.strerror}") from err
        if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
            raise InvalidArgument(
                f"device {device.host_path!r} is neither a block device nor a disk image file; a VM pod can "
                "attach only those"
            )
        if not os.path.isabs(device.container_path):
            raise InvalidArgument(f"device container_path {device.container_path!r} must be absolute")
