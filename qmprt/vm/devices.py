"""QEMU devices as frozen dataclasses that render themselves.

Each device is described once. ``args()`` gives its command-line arguments; devices that can be
hot-plugged also give ``qmp_args()``, the arguments of the matching QMP command. ``-device`` and
``-blockdev`` use QEMU's JSON syntax, so the command line and ``device_add``/``blockdev-add`` carry the
very same dictionary, and file names need no comma escaping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from qmprt.virtio import Transport


def keyval_escape(value: str) -> str:
    """Escape a value for QEMU's ``key=value,…`` option syntax (a comma is written twice)."""
    return value.replace(",", ",,")


def _json_arg(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), sort_keys=False)


@dataclass(frozen=True)
class SocketChardev:
    """A unix socket chardev whose listening socket qmprt created and passes in as ``fd``.

    QEMU accepts one client at a time on it; ``logfile`` records every byte QEMU writes to it whether
    or not a client is connected (that is how the console log survives qmprt restarts).
    """

    id: str
    fd: int
    logfile: str | None = None

    def args(self) -> list[str]:
        opts = f"socket,id={self.id},fd={self.fd},server=on,wait=off"
        if self.logfile is not None:
            opts += f",logfile={keyval_escape(self.logfile)},logappend=on"
        return ["-chardev", opts]


@dataclass(frozen=True)
class QMPMonitor:
    chardev: str

    def args(self) -> list[str]:
        return ["-mon", f"chardev={self.chardev},mode=control"]


@dataclass(frozen=True)
class SerialConsole:
    """The guest's first serial port (ttyS0), on both q35 and microvm (its ISA serial)."""

    chardev: str

    def args(self) -> list[str]:
        return ["-serial", f"chardev:{self.chardev}"]


@dataclass(frozen=True)
class Blockdev:
    """A block backend: a protocol node (file) with a format node on top."""

    node_name: str
    filename: str
    format: Literal["qcow2", "raw"]
    read_only: bool = False

    def qmp_args(self) -> dict[str, Any]:
        return {
            "driver": self.format,
            "node-name": self.node_name,
            "read-only": self.read_only,
            "file": {
                "driver": "file",
                "filename": self.filename,
                "read-only": self.read_only,
            },
        }

    def args(self) -> list[str]:
        return ["-blockdev", _json_arg(self.qmp_args())]


@dataclass(frozen=True)
class VirtioBlk:
    id: str
    drive: str
    transport: Transport
    serial: str | None = None
    bootindex: int | None = None

    def qmp_args(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "driver": self.transport.virtio("virtio-blk"),
            "id": self.id,
            "drive": self.drive,
        }
        if self.serial is not None:
            document["serial"] = self.serial
        if self.bootindex is not None:
            document["bootindex"] = self.bootindex
        return document

    def args(self) -> list[str]:
        return ["-device", _json_arg(self.qmp_args())]


@dataclass(frozen=True)
class VirtioSerial:
    id: str
    transport: Transport

    def qmp_args(self) -> dict[str, Any]:
        return {"driver": self.transport.virtio("virtio-serial"), "id": self.id}

    def args(self) -> list[str]:
        return ["-device", _json_arg(self.qmp_args())]


@dataclass(frozen=True)
class VirtSerialPort:
    """A named virtio-serial port; the guest agent listens on ``org.qemu.guest_agent.0``."""

    id: str
    bus: str
    chardev: str
    name: str

    def qmp_args(self) -> dict[str, Any]:
        return {
            "driver": "virtserialport",
            "id": self.id,
            "bus": f"{self.bus}.0",
            "chardev": self.chardev,
            "name": self.name,
        }

    def args(self) -> list[str]:
        return ["-device", _json_arg(self.qmp_args())]


@dataclass(frozen=True)
class TapNetdev:
    """A tap backend on an fd qmprt opened (a tap or macvtap queue in the pod's network namespace).

    ``vhost=off``: the kernel's vhost-net is not always there (no ``/dev/vhost-net`` on some hosts), and
    the fd was opened by qmprt, not QEMU, so QEMU could not open vhost itself anyway.
    """

    id: str
    fd: int

    def qmp_args(self) -> dict[str, Any]:
        return {"type": "tap", "id": self.id, "fd": str(self.fd), "vhost": False}

    def args(self) -> list[str]:
        return ["-netdev", f"tap,id={self.id},fd={self.fd},vhost=off"]


@dataclass(frozen=True)
class HubportNetdev:
    """A backend that goes nowhere (a port of an otherwise empty hub): a template's NICs, which exist so
    that its clones have the same devices; each clone puts its own tap behind the NIC instead."""

    id: str
    hub: int

    def args(self) -> list[str]:
        return ["-netdev", f"hubport,id={self.id},hubid={self.hub}"]


@dataclass(frozen=True)
class VirtioNet:
    """The guest NIC. ``host_mtu`` advertises the CNI interface's MTU (VIRTIO_NET_F_MTU): the guest
    driver adopts it at probe, before any network configuration runs."""

    id: str
    netdev: str
    mac: str
    transport: Transport
    host_mtu: int | None = None

    def qmp_args(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "driver": self.transport.virtio("virtio-net"),
            "id": self.id,
            "netdev": self.netdev,
            "mac": self.mac,
        }
        if self.host_mtu is not None:
            document["host_mtu"] = self.host_mtu
        return document

    def args(self) -> list[str]:
        return ["-device", _json_arg(self.qmp_args())]


@dataclass(frozen=True)
class PvPanic:
    """pvpanic lets the guest kernel tell QEMU it panicked (QMP event GUEST_PANICKED)."""

    transport: Transport

    def args(self) -> list[str]:
        # The ISA device needs no slot; microvm has an ISA bus too (its serial port lives there).
        return ["-device", _json_arg({"driver": "pvpanic"})]


@dataclass(frozen=True)
class VirtioRng:
    """Entropy for the guest, so early boot never waits on the RNG."""

    id: str
    transport: Transport

    def args(self) -> list[str]:
        return ["-device", _json_arg({"driver": self.transport.virtio("virtio-rng"), "id": self.id})]


@dataclass(frozen=True)
class VMGenID:
    """The VM generation id (ACPI): a guest kernel with the vmgenid driver reseeds its RNG when it
    changes, which a restored snapshot's does (``guid=auto``: a new one at every QEMU start)."""

    def args(self) -> list[str]:
        return ["-device", _json_arg({"driver": "vmgenid", "id": "vmgenid0", "guid": "auto"})]


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot: QEMU loads the kernel and initramfs itself, no bootloader."""

    kernel: str
    initrd: str | None = None
    append: tuple[str, ...] = field(default_factory=tuple)

    def args(self) -> list[str]:
        argv = ["-kernel", self.kernel]
        if self.initrd is not None:
            argv += ["-initrd", self.initrd]
        if self.append:
            argv += ["-append", " ".join(self.append)]
        return argv


@dataclass(frozen=True)
class VirtioBalloon:
    """The balloon through which guest memory shrinks and grows live (QMP ``balloon``/``query-balloon``).

    ``deflate_on_oom`` lets a guest that runs out of memory take pages back from the balloon instead of
    killing its own processes; the hard limit stays the VM's cgroup. ``free_page_reporting`` hands the
    pages the guest frees back to the host, so a long-running guest's footprint shrinks again.
    """

    id: str
    transport: Transport
    deflate_on_oom: bool = True
    free_page_reporting: bool = True

    def qmp_args(self) -> dict[str, Any]:
        return {
            "driver": self.transport.virtio("virtio-balloon"),
            "id": self.id,
            "deflate-on-oom": self.deflate_on_oom,
            "free-page-reporting": self.free_page_reporting,
        }

    def args(self) -> list[str]:
        return ["-device", _json_arg(self.qmp_args())]


MemoryBackendKind = Literal["ram", "file", "memfd"]


@dataclass(frozen=True)
class MemoryBackend:
    """Guest RAM as a QOM object, so it can be bound to host NUMA nodes and backed by what the pod asks.

    ``ram`` is plain anonymous memory; ``file`` maps files in ``mem_path`` (a hugetlbfs mount: hugepages);
    ``memfd`` is anonymous memory another process can map (``share``), which vhost-user devices such as
    virtiofsd need. ``host_nodes`` binds the pages to those host nodes (``policy=bind``: never elsewhere).
    ``qmp_args()`` is the argument of ``object-add``.
    """

    id: str
    size_mib: int
    kind: MemoryBackendKind = "ram"
    host_nodes: tuple[int, ...] = ()
    mem_path: str | None = None
    share: bool = False
    prealloc: bool = False

    def __post_init__(self) -> None:
        if (self.kind == "file") != (self.mem_path is not None):
            raise ValueError("a file memory backend needs mem_path, and only a file backend takes one")
        if self.kind == "ram" and self.share:
            raise ValueError("shared guest memory comes from a memfd or file backend")

    def qmp_args(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "qom-type": f"memory-backend-{self.kind}",
            "id": self.id,
            "size": self.size_mib * 1024 * 1024,
        }
        if self.mem_path is not None:
            document["mem-path"] = self.mem_path
        if self.kind != "ram":
            # memfd defaults to share=on and file to share=off: say which one is meant.
            document["share"] = self.share
        if self.prealloc:
            document["prealloc"] = True
        if self.host_nodes:
            document["host-nodes"] = list(self.host_nodes)
            document["policy"] = "bind"
        return document

    def args(self) -> list[str]:
        return ["-object", _json_arg(self.qmp_args())]


@dataclass(frozen=True)
class NumaNode:
    """One guest NUMA node: a contiguous range of vCPUs and the memory backend holding its RAM."""

    node_id: int
    first_cpu: int
    last_cpu: int
    memdev: str

    def __post_init__(self) -> None:
        if not 0 <= self.first_cpu <= self.last_cpu:
            raise ValueError(f"NUMA node {self.node_id}: vCPUs {self.first_cpu}-{self.last_cpu} are not a range")

    @property
    def cpus(self) -> str:
        return str(self.first_cpu) if self.first_cpu == self.last_cpu else f"{self.first_cpu}-{self.last_cpu}"

    def args(self) -> list[str]:
        # -numa takes no JSON form in QEMU 7.2; none of these values can hold a comma.
        return ["-numa", f"node,nodeid={self.node_id},cpus={self.cpus},memdev={self.memdev}"]


@dataclass(frozen=True)
class RawArgs:
    """Arguments rendered earlier, kept as given: what ``vm.json`` holds of an adopted VM's
    ``extra_devices``, and the disks of container records written before they were kept as volumes."""

    argv: tuple[str, ...]

    def args(self) -> list[str]:
        return list(self.argv)
