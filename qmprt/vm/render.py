"""From a ``VMConfig`` to the ``VMSpec`` of its emulator: the devices every qmprt VM has.

Monitors and the serial console on sockets qmprt created, the disks (root, seed, extra) with the
first one booted when there is no kernel, the devices other mechanisms describe (``extra_devices``), one
virtio NIC per tap fd, and the guest agent's channel, an RNG, a balloon and a panic device.
"""

from __future__ import annotations

from collections.abc import Sequence

from qmprt.errors import InvalidArgument
from qmprt.virtio import Transport
from qmprt.vm.config import Snapshot, VMConfig
from qmprt.vm.devices import (
    Blockdev,
    HubportNetdev,
    MemoryBackend,
    PvPanic,
    QMPMonitor,
    SerialConsole,
    SocketChardev,
    TapNetdev,
    VirtioBalloon,
    VirtioBlk,
    VirtioNet,
    VirtioRng,
    VirtioSerial,
    VirtSerialPort,
    VMGenID,
)
from qmprt.vm.spec import Device, VMSpec

GUEST_AGENT_PORT = "org.qemu.guest_agent.0"
EXEC_HELPER_PORT = "io.qmprt.exec.0"


def render(
    config: VMConfig, fds: dict[str, int], console_log: str, nic_fds: Sequence[int] = (), jail: str | None = None,
) -> VMSpec:
    """The full ``VMSpec`` of ``config``, given the fds of the qmprt-made listening sockets and one
    tap fd per NIC of ``config.nics``; a QEMU that drops root (``config.run_as``) chroots to ``jail``."""
    wanted = 0 if config.snapshot is not None and config.snapshot.role == "save" else len(config.nics)
    if len(nic_fds) != wanted:
        raise InvalidArgument(f"{wanted} tap fds wanted for {len(config.nics)} NICs, {len(nic_fds)} given")
    memory = config.memory_plan()
    backends = memory.backends
    transport = Transport.for_machine(config.machine)
    devices = _monitors_and_console(fds, console_log) + _disks(config, transport)
    devices += config.extra_devices
    devices += _nics(config, nic_fds, transport) + _guest_devices(fds, transport)
    if config.snapshot is not None:
        backends = (_snapshot_ram(config.snapshot, backends),)
        devices.append(VMGenID())
    return VMSpec(
        name=config.vm_id, machine=config.machine, accel=config.accel, cpus=config.cpus,
        memory_mib=config.memory_mib, kernel=config.kernel,
        memory_backends=backends, numa_nodes=memory.nodes,
        devices=tuple(devices), binary=config.binary, tcg_tb_size_mib=config.tcg_tb_size_mib,
        run_as=config.run_as, chroot=jail if config.run_as is not None else None,
        incoming_deferred=config.snapshot is not None and config.snapshot.role == "restore",
    )


def _snapshot_ram(snapshot: Snapshot, planned: tuple[MemoryBackend, ...]) -> MemoryBackend:
    """The one RAM backend of a template (shared: the guest's writes land in the file) or of a clone
    (private: copy on write over the template's file). ``VMConfig`` allows nothing but one plain backend."""
    (backend,) = planned
    return MemoryBackend(backend.id, backend.size_mib, "file", mem_path=snapshot.ram, share=snapshot.role == "save")


def _monitors_and_console(fds: dict[str, int], console_log: str) -> list[Device]:
    return [
        SocketChardev("qmp", fds["qmp"]),
        QMPMonitor("qmp"),
        SocketChardev("qmp-shell", fds["qmp-shell"]),
        QMPMonitor("qmp-shell"),
        SocketChardev("console", fds["console"], logfile=console_log),
        SerialConsole("console"),
    ]


def _disks(config: VMConfig, transport: Transport) -> list[Device]:
    """Root, seed and extra disks in that order; the root disk boots unless a kernel is given."""
    disks = [("root", config.root_disk)]
    if config.seed is not None:
        disks.append(("seed", config.seed))
    disks += [(f"disk{index}", disk) for index, disk in enumerate(config.extra_disks)]
    devices: list[Device] = []
    for index, (node, disk) in enumerate(disks):
        devices.append(Blockdev(node, disk.path, disk.format, read_only=disk.read_only))  # type: ignore[arg-type]
        devices.append(
            VirtioBlk(
                f"blk-{node}", node, transport, serial=disk.serial,
                bootindex=0 if index == 0 and config.kernel is None else None,
            )
        )
    return devices


def _nics(config: VMConfig, nic_fds: Sequence[int], transport: Transport) -> list[Device]:
    """A virtio NIC per ``config.nics`` on its tap fd; a template being saved has no taps (hub ports)."""
    devices: list[Device] = []
    template = config.snapshot is not None and config.snapshot.role == "save"
    for index, nic in enumerate(config.nics):
        devices.append(HubportNetdev(f"net{index}", index) if template else TapNetdev(f"net{index}", nic_fds[index]))
        devices.append(VirtioNet(f"nic{index}", f"net{index}", nic.mac, transport, host_mtu=nic.mtu))
    return devices


def _guest_devices(fds: dict[str, int], transport: Transport) -> list[Device]:
    return [
        VirtioSerial("vser0", transport),
        SocketChardev("qga", fds["qga"]),
        VirtSerialPort("qga-port", "vser0", "qga", GUEST_AGENT_PORT),
        SocketChardev("exec", fds["exec"]),
        VirtSerialPort("exec-port", "vser0", "exec", EXEC_HELPER_PORT),
        VirtioRng("rng0", transport),
        VirtioBalloon("balloon0", transport),
        PvPanic(transport),
    ]
