"""Block volumes: what backs a guest disk, and how the guest finds it.

Each volume is a frozen dataclass that renders itself: ``args(transport)`` gives its QEMU command line
(secret objects, one ``-blockdev`` node tree, one ``-device``), ``qmp_args(transport)`` the QMP commands
that hot-plug the same thing (``object-add``, ``blockdev-add``, ``device_add``). Backends:

- ``HostBlockVolume``: a host block device (``host_device`` driver) or a raw file (``file``);
- ``EphemeralVolume``: a qcow2 file qmprt creates (``ensure``) in a directory it is given and deletes;
- ``RBDVolume`` (``qmprt.volumes.network``): a Ceph RBD image (``rbd`` driver: pool, image, monitors as ``server``, user); the
  key comes from a ``secret`` object reading a 0600 file (``write_secret``), never the command line;
- ``ISCSIVolume`` (``qmprt.volumes.network``): an iSCSI LUN (``iscsi`` driver: portal, target, LUN, optional CHAP user whose
  password is a ``secret`` object too).

``Attachment`` says how the guest sees a volume: on ``virtio-blk`` (default) or ``virtio-scsi``
(``scsi-hd`` on one ``virtio-scsi`` controller that ``BlockVolumes`` adds once), with a serial so the
guest finds it by ``Attachment.guest_path`` (``/dev/disk/by-id/virtio-<serial>``: virtio-blk keeps
20 bytes of serial, so serials are at most 20), read-only when asked (both block nodes and so the
guest's disk). QEMU names are all prefixed ``vol-`` so they never meet the engine's (``root``,
``seed``, ``disk0``, ``blk-*``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from qmprt.osutil import run_bounded
from qmprt.errors import InvalidArgument
from qmprt.virtio import Transport

Bus = Literal["virtio-blk", "virtio-scsi"]
SecretFormat = Literal["raw", "base64"]
QMPCommand = tuple[str, dict[str, Any]]

SCSI_CONTROLLER_ID = "vol-scsi0"
SERIAL_MAX = 20  # VIRTIO_BLK_ID_BYTES
QEMU_IMG_TIMEOUT_S = 60.0

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,15}")
_SERIAL = re.compile(rf"[A-Za-z0-9_.-]{{1,{SERIAL_MAX}}}")


def _json(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


def virtio_driver(kind: str, transport: Transport) -> str:
    """``virtio-scsi`` → ``virtio-scsi-pci`` on PCI, ``virtio-scsi-device`` on MMIO (``transport`` may
    also be its value, ``"pci"`` or ``"mmio"``)."""
    return Transport(transport).virtio(kind)


@dataclass(frozen=True)
class Attachment:
    """How the guest sees a volume. ``name`` (``[a-z0-9-]``, ≤ 16) makes the QEMU ids."""

    name: str
    serial: str
    read_only: bool = False
    bus: Bus = "virtio-blk"

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise InvalidArgument(f"volume name {self.name!r} must be 1-16 of a-z, 0-9, '-' (not first)")
        if not _SERIAL.fullmatch(self.serial):
            raise InvalidArgument(
                f"volume serial {self.serial!r} must be 1-{SERIAL_MAX} of letters, digits, '_', '.', '-'"
            )
        if self.bus not in ("virtio-blk", "virtio-scsi"):
            raise InvalidArgument(f"volume bus {self.bus!r} must be virtio-blk or virtio-scsi")

    @property
    def node_name(self) -> str:
        return f"vol-{self.name}"

    @property
    def device_id(self) -> str:
        return f"vol-{self.name}-dev"

    @property
    def guest_path(self) -> str:
        """Where udev (or the tiny guest's init) links the disk."""
        if self.bus == "virtio-scsi":
            return f"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_{self.serial}"
        return f"/dev/disk/by-id/virtio-{self.serial}"

    def device(self, transport: Transport) -> dict[str, Any]:
        if self.bus == "virtio-scsi":
            return {
                "driver": "scsi-hd", "id": self.device_id, "drive": self.node_name,
                "bus": f"{SCSI_CONTROLLER_ID}.0", "serial": self.serial,
            }
        return {
            "driver": virtio_driver("virtio-blk", transport), "id": self.device_id,
            "drive": self.node_name, "serial": self.serial,
        }


@dataclass(frozen=True)
class SecretObject:
    """A QEMU ``secret`` object that reads its value from a file (see ``write_secret``)."""

    id: str
    file: str
    format: SecretFormat = "raw"

    def qmp_args(self) -> dict[str, Any]:
        return {"qom-type": "secret", "id": self.id, "file": self.file, "format": self.format}

    def args(self) -> list[str]:
        return ["-object", _json(self.qmp_args())]


def write_secret(path: str | os.PathLike[str], secret: bytes, format: SecretFormat = "raw") -> None:
    """Write ``secret`` to ``path`` as a 0600 file (atomically), for a ``SecretObject`` to read.

    ``base64`` secrets (a Ceph key as ``ceph auth get-key`` prints it) are checked to be base64 and
    written without surrounding whitespace, which QEMU's decoder refuses. The directory should be
    private (the pod's state directory is 0700).
    """
    if format == "base64":
        secret = secret.strip()
        try:
            base64.b64decode(secret, validate=True)
        except binascii.Error as err:
            raise InvalidArgument(f"the secret for {os.fspath(path)} is not base64: {err}") from err
    if not secret:
        raise InvalidArgument(f"the secret for {os.fspath(path)} is empty")
    target = Path(path)
    fd, temp_path = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secret)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_path, target)
    except BaseException:
        Path(temp_path).unlink(missing_ok=True)
        raise


class BlockVolume:
    """A volume's rendering, shared by every kind; subclasses say which protocol node and format they are."""

    attachment: Attachment
    format_driver: ClassVar[Literal["raw", "qcow2"]] = "raw"

    def protocol(self) -> dict[str, Any]:
        raise NotImplementedError

    def secrets(self) -> tuple[SecretObject, ...]:
        return ()

    def _secret_id(self, purpose: str) -> str:
        return f"{self.attachment.node_name}-{purpose}"

    def _secret(self, purpose: str, file: str | None, format: SecretFormat) -> tuple[SecretObject, ...]:
        return () if file is None else (SecretObject(self._secret_id(purpose), file, format),)

    def blockdev(self) -> dict[str, Any]:
        """The ``blockdev-add`` argument: a format node on a protocol node, both read-only or not."""
        node = self.attachment.node_name
        read_only = self.attachment.read_only
        return {
            "driver": self.format_driver,
            "node-name": node,
            "read-only": read_only,
            "discard": "unmap",
            "file": {**self.protocol(), "node-name": f"{node}-file", "read-only": read_only, "discard": "unmap"},
        }

    def args(self, transport: Transport) -> list[str]:
        argv: list[str] = []
        for secret in self.secrets():
            argv += secret.args()
        return argv + ["-blockdev", _json(self.blockdev()), "-device", _json(self.attachment.device(transport))]

    def qmp_args(self, transport: Transport) -> list[QMPCommand]:
        """The hot-plug commands, in order (a virtio-scsi volume needs the controller already there)."""
        commands: list[QMPCommand] = [("object-add", secret.qmp_args()) for secret in self.secrets()]
        return commands + [("blockdev-add", self.blockdev()), ("device_add", self.attachment.device(transport))]


@dataclass(frozen=True)
class HostBlockVolume(BlockVolume):
    """A host block device (``host_device``) or raw file (``file``) handed to the guest as it is."""

    attachment: Attachment
    path: str
    driver: Literal["host_device", "file"] = "host_device"

    @classmethod
    def for_path(cls, path: str, attachment: Attachment) -> HostBlockVolume:
        """The volume for ``path``, its driver chosen by what the path is; ``InvalidArgument`` if neither."""
        try:
            mode = os.stat(path).st_mode
        except OSError as err:
            raise InvalidArgument(f"volume {attachment.name}: {path} cannot be used: {err.strerror}") from err
        if stat.S_ISBLK(mode):
            return cls(attachment, path, "host_device")
        if stat.S_ISREG(mode):
            return cls(attachment, path, "file")
        raise InvalidArgument(f"volume {attachment.name}: {path} is neither a block device nor a regular file")

    def protocol(self) -> dict[str, Any]:
        return {"driver": self.driver, "filename": self.path}


@dataclass(frozen=True)
class EphemeralVolume(BlockVolume):
    """A qcow2 data disk that lives as long as its owner (a pod) and is deleted with it."""

    attachment: Attachment
    path: str
    size_bytes: int
    format_driver: ClassVar[Literal["raw", "qcow2"]] = "qcow2"

    @classmethod
    async def ensure(
        cls, directory: str | os.PathLike[str], attachment: Attachment, size_bytes: int, qemu_img: str = "qemu-img"
    ) -> EphemeralVolume:
        """``<directory>/<name>.qcow2`` of ``size_bytes`` (rounded up to 512): created (0600) if missing,
        else checked to be a qcow2 of that size, so a restarted container gets its data back."""
        if size_bytes <= 0:
            raise InvalidArgument(f"volume {attachment.name}: size must be positive, not {size_bytes}")
        size_bytes = -(-size_bytes // 512) * 512
        path = Path(directory) / f"{attachment.name}.qcow2"
        volume = cls(attachment, str(path), size_bytes)
        if path.exists():
            info = json.loads(await _run([qemu_img, "info", "-U", "--output=json", "-f", "qcow2", str(path)]))
            if info.get("virtual-size") != size_bytes:
                raise InvalidArgument(
                    f"volume {attachment.name} exists with {info.get('virtual-size')} bytes, not {size_bytes}"
                )
            return volume
        fd, temp_path = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            await _run([qemu_img, "create", "-q", "-f", "qcow2", temp_path, str(size_bytes)])
            os.link(temp_path, path)  # fails if another creator won: never two disks under one name
        finally:
            Path(temp_path).unlink(missing_ok=True)
        return volume

    def delete(self) -> None:
        """Remove the disk file; one already gone is not an error."""
        Path(self.path).unlink(missing_ok=True)

    def protocol(self) -> dict[str, Any]:
        return {"driver": "file", "filename": self.path}


async def _run(argv: list[str]) -> str:
    return (await run_bounded(argv, QEMU_IMG_TIMEOUT_S)).decode()


def scsi_controller_args(transport: Transport) -> list[str]:
    return ["-device", _json({"driver": virtio_driver("virtio-scsi", transport), "id": SCSI_CONTROLLER_ID})]


@dataclass(frozen=True)
class BlockVolumes:
    """All of one VM's block volumes as one device of its command line (``VMConfig.extra_devices``:
    ``args()`` is the ``Device`` protocol of ``qmprt.vm``), checked together: names and serials unique;
    the virtio-scsi controller first when a volume needs it."""

    volumes: tuple[BlockVolume, ...]
    transport: Transport

    def __post_init__(self) -> None:
        for what, values in (
            ("names", [volume.attachment.name for volume in self.volumes]),
            ("serials", [volume.attachment.serial for volume in self.volumes]),
        ):
            if len(set(values)) != len(values):
                raise InvalidArgument(f"volume {what} are not unique: {values}")

    def args(self) -> list[str]:
        argv: list[str] = []
        if any(volume.attachment.bus == "virtio-scsi" for volume in self.volumes):
            argv += scsi_controller_args(self.transport)
        for volume in self.volumes:
            argv += volume.args(self.transport)
        return argv
