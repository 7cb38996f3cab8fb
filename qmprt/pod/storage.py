"""A container's storage requests, checked before anything is created.

``ContainerConfig.mounts`` (kubelet's ConfigMaps, Secrets, hostPaths… as host paths) and
``ContainerConfig.devices`` (raw block devices) must name paths that exist on this node (their form,
guest paths included, was checked at the CRI edge). Refusals are INVALID_ARGUMENT with the offending path named.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qmprt import state
from qmprt.cloudinit import SeedFile, SeedMount
from qmprt.errors import InvalidArgument, NotFound
from qmprt.pod.annotations import ISCSI_VOLUMES, RBD_VOLUMES, QmprtAnnotations
from qmprt.pod.specs import ContainerSpec, DeviceSpec, MountSpec
from qmprt.virtio import Transport
from qmprt.volumes import (
    Attachment,
    BlockVolume,
    BlockVolumes,
    EphemeralVolume,
    HostBlockVolume,
    ISCSIVolume,
    RBDVolume,
    VirtiofsDaemon,
    VirtiofsShare,
    write_secret,
)


def check_mounts(mounts: Sequence[MountSpec]) -> None:
    """The host side of well-formed mounts (``qmprt.cri.convert`` checked their guest paths)."""
    for mount in mounts:
        if not mount.host_path or not os.path.exists(mount.host_path):
            raise InvalidArgument(
                f"mount at {mount.container_path!r}: host path {mount.host_path!r} does not exist on this node"
            )


def check_devices(devices: Sequence[DeviceSpec]) -> None:
    """The host side of well-formed devices: each is a disk this node has."""
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


FILE_MOUNT_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class StoragePlan:
    """How a container's storage reaches its guest.

    File mounts up to ``FILE_MOUNT_MAX_BYTES`` become cloud-init ``write_files`` with the host file's
    mode; directory mounts become virtiofs shares the guest mounts at the same path (read-only when
    the mount says so); devices, ``qmprt.io/data-volumes``, ``qmprt.io/rbd-volumes`` and
    ``qmprt.io/iscsi-volumes`` become disks with stable serials (``/dev/disk/by-id/virtio-<serial>``).
    """

    files: tuple[SeedFile, ...] = ()
    seed_mounts: tuple[SeedMount, ...] = ()
    shares: tuple[VirtiofsShare, ...] = ()
    volumes: tuple[BlockVolume, ...] = ()


def _serial(container_path: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", os.path.basename(container_path.rstrip("/")) or "disk")[:20] or "disk"
    serial, suffix = base, 1
    while serial in used:
        suffix += 1
        serial = f"{base[:20 - len(str(suffix)) - 1]}-{suffix}"
    used.add(serial)
    return serial


def read_regular_file(path: str, limit: int) -> tuple[bytes, int]:
    """The bytes and mode of the regular file at ``path``, at most ``limit`` bytes; ``InvalidArgument``
    for anything else. Opened non-blocking, so a FIFO cannot stall the open, and checked on the open
    fd, so what is read is what was checked; the read stops past ``limit`` whatever ``st_size`` said
    (files in /proc say 0). Blocking: call it from a worker thread."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as err:
        raise InvalidArgument(f"{path} cannot be read: {err.strerror}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgument(f"{path} is not a regular file (a FIFO, device or socket cannot be a file mount)")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise InvalidArgument(f"{path} cannot be read: {err.strerror}") from err
    finally:
        os.close(fd)
    if size > limit:
        raise InvalidArgument(f"{path} holds more than {limit} bytes")
    return b"".join(chunks), info.st_mode & 0o7777


SECRET_MAX_BYTES = 64 * 1024


def _secret_from_mount(mounts: dict[str, str], mount_path: str, name: str, annotation: str) -> bytes:
    host_dir = mounts.get(mount_path)
    if host_dir is None:
        raise InvalidArgument(f"annotation {annotation}: secret_mount {mount_path!r} is not one of the container's mounts")
    try:
        content, _ = read_regular_file(str(Path(host_dir) / name), SECRET_MAX_BYTES)
    except InvalidArgument as err:
        raise InvalidArgument(f"annotation {annotation}: the mount at {mount_path!r}: {err}") from err
    return content.strip()


def _file_mount(mount: MountSpec) -> SeedFile:
    try:
        content, mode = read_regular_file(mount.host_path, FILE_MOUNT_MAX_BYTES)
    except InvalidArgument as err:
        raise InvalidArgument(
            f"mount at {mount.container_path!r}: {err}; a file mount is delivered through cloud-init and may "
            f"be a regular file of at most {FILE_MOUNT_MAX_BYTES} bytes: mount its directory instead"
        ) from err
    return SeedFile(mount.container_path, content, mode)


async def plan_storage(
    spec: ContainerSpec, requested: QmprtAnnotations, directory: Path, socket_dir: Path, transport: Transport
) -> StoragePlan:
    """Decide (and create ephemeral disks and secret files in ``directory``) for one container."""
    files: list[SeedFile] = []
    seed_mounts: list[SeedMount] = []
    shares: list[VirtiofsShare] = []
    for index, mount in enumerate(spec.mounts):
        if os.path.isdir(mount.host_path):
            share = VirtiofsShare(
                name=f"fs{index}", tag=f"qmprt-fs{index}", source=os.path.realpath(mount.host_path),
                socket_path=str(socket_dir / f"fs{index}.sock"), read_only=mount.readonly,
            )
            shares.append(share)
            seed_mounts.append(SeedMount(share.tag, mount.container_path, mount.readonly))
            continue
        files.append(await asyncio.to_thread(_file_mount, mount))
    volumes: list[BlockVolume] = []
    serials: set[str] = set()
    for index, device in enumerate(spec.devices):
        attachment = Attachment(f"dev{index}", _serial(device.container_path, serials), read_only="w" not in device.permissions)
        volumes.append(HostBlockVolume.for_path(device.host_path, attachment))
    for index, size in enumerate(requested.data_volume_sizes):
        attachment = Attachment(f"data{index}", _serial(f"data{index}", serials))
        volumes.append(await EphemeralVolume.ensure(directory, attachment, size))
    mounts = {mount.container_path: mount.host_path for mount in spec.mounts}
    for index, rbd in enumerate(requested.rbd_volumes):
        key_file = directory / f"rbd{index}.key"
        key = await asyncio.to_thread(_secret_from_mount, mounts, rbd.secret_mount, "key", RBD_VOLUMES)
        write_secret(key_file, key, "base64")
        volumes.append(
            RBDVolume(Attachment(f"rbd{index}", _serial(f"rbd{index}", serials)), rbd.pool, rbd.image,
                      rbd.monitors, rbd.user, str(key_file))
        )
    for index, iscsi in enumerate(requested.iscsi_volumes):
        password_file = None
        if iscsi.secret_mount:
            password_file = str(directory / f"iscsi{index}.password")
            password = await asyncio.to_thread(
                _secret_from_mount, mounts, iscsi.secret_mount, "password", ISCSI_VOLUMES
            )
            write_secret(password_file, password)
        volumes.append(
            ISCSIVolume(Attachment(f"iscsi{index}", _serial(f"iscsi{index}", serials)), iscsi.portal, iscsi.target,
                        iscsi.lun, iscsi.user or None, password_file)
        )
    BlockVolumes(tuple(volumes), transport)  # checks them together, as the VM will render them
    return StoragePlan(tuple(files), tuple(seed_mounts), tuple(shares), tuple(volumes))


class ShareDaemons:
    """The virtiofsd processes of one running container, persisted in ``virtiofs.json`` beside it."""

    FILE = "virtiofs.json"

    def __init__(self, directory: Path, daemons: list[VirtiofsDaemon]) -> None:
        self.directory = directory
        self.daemons = daemons

    @classmethod
    async def start(cls, directory: Path, shares: Sequence[VirtiofsShare], exec_prefix: Sequence[str]) -> ShareDaemons:
        started = cls(directory, [])
        try:
            for share in shares:
                daemon = await VirtiofsDaemon.start(share, directory / f"virtiofsd-{share.name}.log", exec_prefix=exec_prefix)
                started.daemons.append(daemon)
                state.write_json_atomic(directory / cls.FILE, [d.to_json() for d in started.daemons])
        except BaseException:
            await started.stop()
            raise
        return started

    @classmethod
    def adopt(cls, directory: Path) -> ShareDaemons:
        try:
            documents = state.read_json(directory / cls.FILE)
        except NotFound:
            return cls(directory, [])
        return cls(directory, [VirtiofsDaemon.adopt(document) for document in documents])

    async def stop(self) -> None:
        for daemon in self.daemons:
            await daemon.stop()
        self.daemons = []
        (self.directory / self.FILE).unlink(missing_ok=True)
