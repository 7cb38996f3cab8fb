"""What a VM is (``VMConfig``), its life (``VMState``) and what qmprt records of it (``VMStatus``)."""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from typing import Any

from qmprt.errors import InvalidArgument
from qmprt.vm.devices import KernelBoot, RawArgs
from qmprt.vm.numa import HugepageConfig, MemoryPlan, plan_memory
from qmprt.vm.spec import Accelerator, Device, MachineType


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass
class StartTimings:
    """Monotonic timestamps of one ``VM.start``: entered, QEMU exec'd (Popen returned), QMP up."""

    begin: float = 0.0
    spawned: float = 0.0
    monitor_ready: float = 0.0


class VMState(str, enum.Enum):
    """The emulator's life. Allowed transitions::

        STARTING → RUNNING → STOPPING → EXITED
        STARTING → EXITED       (QEMU failed to come up)
        RUNNING  → EXITED       (the guest powered off, panicked, or QEMU died)
    """

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"


_TRANSITIONS = {
    VMState.STARTING: {VMState.RUNNING, VMState.EXITED},
    VMState.RUNNING: {VMState.STOPPING, VMState.EXITED},
    VMState.STOPPING: {VMState.EXITED},
    VMState.EXITED: set(),
}


def allowed_transition(current: VMState, new: VMState) -> bool:
    return new == current or new in _TRANSITIONS[current]


class ShutdownStep(enum.IntEnum):
    """How far a staged shutdown went (each step harder than the one before)."""

    NONE = 0
    POWERDOWN = 1
    QUIT = 2
    KILL = 3


@dataclass(frozen=True)
class DiskConfig:
    path: str
    format: str  # "qcow2" or "raw"
    read_only: bool = False
    serial: str | None = None


@dataclass(frozen=True)
class NICConfig:
    """A guest NIC in front of a tap fd that the caller opens at every start (``VM.start(nic_fds=…)``)."""

    mac: str
    mtu: int | None = None

    def __post_init__(self) -> None:
        if not _MAC.fullmatch(self.mac):
            raise InvalidArgument(f"NIC MAC {self.mac!r} is not of the form aa:bb:cc:dd:ee:ff")
        if int(self.mac[:2], 16) & 1:
            raise InvalidArgument(f"NIC MAC {self.mac} is a multicast address")
        if self.mtu is not None and not 68 <= self.mtu <= 65535:
            raise InvalidArgument(f"NIC MTU {self.mtu} is outside 68..65535")


@dataclass(frozen=True)
class Snapshot:
    """Guest RAM in ``ram`` (a file) and the device state in ``state`` (a QEMU migration stream).

    ``save`` (a template being built): RAM is the file, mapped shared, so what the guest wrote is in it
    when the VM is paused; the migration stream skips it (QEMU's ``x-ignore-shared``) and holds only the
    devices. ``restore`` (a clone): the same file mapped private, copy on write (the template's file never
    changes; clean pages stay shared between clones in the page cache), and QEMU waits for the stream
    (``-incoming defer``). Both give the guest a ``vmgenid`` device, which a restore changes.
    """

    role: str  # "save" | "restore"
    ram: str
    state: str

    def __post_init__(self) -> None:
        if self.role not in ("save", "restore"):
            raise InvalidArgument(f"a snapshot is saved or restored, not {self.role!r}")


@dataclass(frozen=True)
class VMConfig:
    """What to run. ``root_disk`` is the disk QEMU boots (an overlay, usually); ``seed`` the NoCloud ISO.

    Guest RAM (see ``qmprt.vm.numa``): ``host_nodes`` binds it to those host NUMA nodes (empty: no
    binding), ``guest_numa_nodes`` gives the guest that many NUMA nodes, ``hugepages`` backs it with
    hugepages, ``shared_memory`` makes it mappable by other processes (virtiofsd). A layout that cannot
    work anywhere raises ``InvalidArgument`` here; one this host cannot give, at ``VM.start``.

    ``extra_devices`` are devices another mechanism describes (``qmprt.volumes``: block volumes,
    virtiofs shares, their secret objects), rendered like the engine's own (the ``Device`` protocol:
    ``args()``) after its disks. Secrets in them are files QEMU reads, so the argv (and ``vm.json``,
    which keeps their rendering as ``extra_args``) never holds one.
    """

    vm_id: str
    root_disk: DiskConfig
    machine: MachineType = "q35"
    accel: Accelerator = "tcg"
    cpus: int = 1
    memory_mib: int = 128
    kernel: KernelBoot | None = None
    seed: DiskConfig | None = None
    extra_disks: tuple[DiskConfig, ...] = ()
    tcg_tb_size_mib: int | None = None
    binary: str = "qemu-system-x86_64"
    host_nodes: tuple[int, ...] = ()
    guest_numa_nodes: int = 1
    hugepages: HugepageConfig | None = None
    shared_memory: bool = False
    extra_devices: tuple[Device, ...] = ()
    nics: tuple[NICConfig, ...] = ()
    # When the guest powers off, the status after the last console line starting with this is the
    # exit code (a job's command reports its end so); empty: a power-off is exit 0.
    exit_status_marker: str = ""
    # QEMU drops root once it has opened what it needs: it becomes this (uid, gid) and is confined to
    # the VM's state directory (``-runas``, ``-chroot``). None: it stays root (engine tests, debugging).
    run_as: tuple[int, int] | None = None
    snapshot: Snapshot | None = None

    def __post_init__(self) -> None:
        # Planned once (it also checks the layout); memory_plan() hands out this one.
        object.__setattr__(self, "_memory_plan", plan_memory(
            memory_mib=self.memory_mib, cpus=self.cpus, machine=self.machine,
            guest_numa_nodes=self.guest_numa_nodes, host_nodes=self.host_nodes,
            hugepages=self.hugepages, shared=self.shared_memory,
        ))
        if self.run_as is not None and not all(0 < part < 2**32 - 1 for part in self.run_as):
            raise InvalidArgument(f"a VM's user and group must be non-root ids, not {self.run_as}")
        if not self.shared_memory and any("vhost-user" in arg for arg in self.extra_args()):
            raise InvalidArgument("vhost-user devices (virtiofs shares) need the VM's shared_memory")
        if self.snapshot is not None and (
            self.hugepages is not None or self.shared_memory or self.guest_numa_nodes != 1 or self.host_nodes
        ):
            raise InvalidArgument(
                "a template's RAM is one plain file: hugepages, shared memory (virtiofs), guest NUMA "
                "nodes and host node bindings cannot be templated"
            )

    def memory_plan(self) -> MemoryPlan:
        plan: MemoryPlan = self.__dict__["_memory_plan"]
        return plan

    def extra_args(self) -> list[str]:
        """The QEMU arguments of ``extra_devices``, in order."""
        return [arg for device in self.extra_devices for arg in device.args()]

    def to_json(self) -> dict[str, Any]:
        """The config as ``vm.json`` keeps it: other mechanisms' devices by their rendering (all an
        adopted VM needs of them: it is running already)."""
        document = dataclasses.asdict(self)
        del document["extra_devices"]
        return {**document, "extra_args": self.extra_args()}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> VMConfig:
        document = dict(document)
        extra_args = tuple(document.pop("extra_args", ()))
        kernel = document.get("kernel")
        return cls(
            **{
                **document,
                "root_disk": DiskConfig(**document["root_disk"]),
                "seed": DiskConfig(**document["seed"]) if document.get("seed") else None,
                "extra_disks": tuple(DiskConfig(**disk) for disk in document.get("extra_disks", ())),
                "kernel": KernelBoot(
                    kernel=kernel["kernel"], initrd=kernel.get("initrd"), append=tuple(kernel["append"])
                )
                if kernel
                else None,
                "host_nodes": tuple(document.get("host_nodes", ())),
                "hugepages": HugepageConfig(**document["hugepages"]) if document.get("hugepages") else None,
                "extra_devices": (RawArgs(extra_args),) if extra_args else (),
                "nics": tuple(NICConfig(**nic) for nic in document.get("nics", ())),
                "run_as": tuple(document["run_as"]) if document.get("run_as") else None,
                "snapshot": Snapshot(**document["snapshot"]) if document.get("snapshot") else None,
            }
        )


@dataclass(frozen=True)
class VMStatus:
    state: VMState = VMState.STARTING
    pid: int | None = None
    pid_create_time: float | None = None
    started_at_ns: int = 0
    finished_at_ns: int = 0
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    shutdown_reason: str | None = None  # from QMP SHUTDOWN: guest-shutdown, host-qmp-quit, …
    shutdown_by_guest: bool = False
    panicked: bool = False
    paused: bool = False  # QMP STOP seen (an operator's "stop" on the qmp-shell monitor, say)
    stop_requested: bool = False
    shutdown_step: int = ShutdownStep.NONE

    def to_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["state"] = self.state.value
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> VMStatus:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in document.items() if key in known}
        values["state"] = VMState(values.get("state", VMState.STARTING))
        return cls(**values)
