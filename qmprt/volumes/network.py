"""Network block volumes: Ceph RBD and iSCSI, rendered with QEMU's ``rbd`` and ``iscsi`` drivers.

Their credentials never reach the command line: a Ceph key or a CHAP password is a QEMU ``secret``
object reading a 0600 file that ``qmprt.volumes.block.write_secret`` wrote. QEMU checks the rendered
``-blockdev`` against its schema even where the driver modules (Debian's ``qemu-block-extra``) are not
installed; no real RBD or iSCSI target is used by the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from qmprt.errors import InvalidArgument
from qmprt.volumes.block import Attachment, BlockVolume, SecretObject

_CEPH_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")
_IQN = re.compile(r"iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[A-Za-z0-9.:_-]+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32}")


def parse_host_port(address: str, default_port: int, what: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → (host, port); ``InvalidArgument`` otherwise."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([^:\[\]]+)(?::(\d{1,5}))?", address)
    if not match:
        raise InvalidArgument(f"{what} {address!r} must be host, host:port or [ipv6]:port")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or default_port)
    if not (match.group(1) or _HOST.fullmatch(host)) or not 0 < port < 65536:
        raise InvalidArgument(f"{what} {address!r} must be host, host:port or [ipv6]:port")
    return host, port


@dataclass(frozen=True)
class RBDVolume(BlockVolume):
    """A Ceph RBD image. ``monitors`` are ``host[:port]`` (6789 by default); without any, librados
    reads them from ``conf`` (or ``/etc/ceph/ceph.conf``). ``key_file`` holds the user's key in base64
    (``write_secret(..., format="base64")``)."""

    attachment: Attachment
    pool: str
    image: str
    monitors: tuple[str, ...] = ()
    user: str | None = None
    key_file: str | None = None
    namespace: str | None = None
    snapshot: str | None = None
    conf: str | None = None

    def __post_init__(self) -> None:
        for what, value in (("pool", self.pool), ("image", self.image), ("user", self.user),
                            ("namespace", self.namespace), ("snapshot", self.snapshot)):
            if value is not None and not _CEPH_NAME.fullmatch(value):
                raise InvalidArgument(f"RBD volume {self.attachment.name}: {what} {value!r} must be of A-Z a-z 0-9 _ . -")
        for monitor in self.monitors:
            parse_host_port(monitor, 6789, f"RBD volume {self.attachment.name}: monitor")
        if self.key_file is not None and self.user is None:
            raise InvalidArgument(f"RBD volume {self.attachment.name}: a key needs the user it belongs to")

    def secrets(self) -> tuple[SecretObject, ...]:
        return self._secret("key", self.key_file, "base64")

    def protocol(self) -> dict[str, Any]:
        document: dict[str, Any] = {"driver": "rbd", "pool": self.pool, "image": self.image}
        optional = {"namespace": self.namespace, "snapshot": self.snapshot, "conf": self.conf, "user": self.user}
        document.update({key: value for key, value in optional.items() if value is not None})
        if self.monitors:
            servers = [parse_host_port(monitor, 6789, "monitor") for monitor in self.monitors]
            document["server"] = [{"host": host, "port": str(port)} for host, port in servers]
        if self.key_file is not None:
            document["key-secret"] = self._secret_id("key")
            document["auth-client-required"] = ["cephx"]
        return document


@dataclass(frozen=True)
class ISCSIVolume(BlockVolume):
    """An iSCSI LUN over TCP. ``portal`` is ``host[:port]`` (3260 by default); CHAP when ``user`` is
    given, its password read from ``password_file`` (``write_secret``, raw)."""

    attachment: Attachment
    portal: str
    target: str
    lun: int = 0
    user: str | None = None
    password_file: str | None = None
    initiator_name: str | None = None

    def __post_init__(self) -> None:
        name = self.attachment.name
        parse_host_port(self.portal, 3260, f"iSCSI volume {name}: portal")
        for what, value in (("target", self.target), ("initiator name", self.initiator_name)):
            if value is not None and not _IQN.fullmatch(value):
                raise InvalidArgument(f"iSCSI volume {name}: {what} {value!r} must be an iqn., eui. or naa. name")
        if not 0 <= self.lun < 16384:
            raise InvalidArgument(f"iSCSI volume {name}: LUN {self.lun} is out of range")
        if (self.user is None) != (self.password_file is None):
            raise InvalidArgument(f"iSCSI volume {name}: CHAP needs both a user and a password")
        if self.user is not None and not _CEPH_NAME.fullmatch(self.user):
            raise InvalidArgument(f"iSCSI volume {name}: user {self.user!r} must be of A-Z a-z 0-9 _ . -")

    def secrets(self) -> tuple[SecretObject, ...]:
        return self._secret("chap", self.password_file, "raw")

    def protocol(self) -> dict[str, Any]:
        host, port = parse_host_port(self.portal, 3260, "portal")
        portal = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        document: dict[str, Any] = {
            "driver": "iscsi", "transport": "tcp", "portal": portal, "target": self.target, "lun": self.lun,
        }
        if self.user is not None:
            document["user"] = self.user
            document["password-secret"] = self._secret_id("chap")
        if self.initiator_name is not None:
            document["initiator-name"] = self.initiator_name
        return document
