"""A complete QEMU command line, rendered in one fixed order.

``VMSpec`` is the description of one emulator process: machine, accelerator, CPUs, memory and the
devices. It is pure data; file descriptors in it are the numbers QEMU will see (qmprt passes them with
``pass_fds`` and keeps the numbers). ``argv()`` is golden-tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from qmprt.vm.devices import KernelBoot, Transport, keyval_escape

MachineType = Literal["q35", "microvm"]
Accelerator = Literal["kvm", "tcg"]

# Forbid what an emulator never needs: this is QEMU's own seccomp filter.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


class Device(Protocol):
    def args(self) -> list[str]: ...


@dataclass(frozen=True)
class VMSpec:
    name: str
    machine: MachineType
    accel: Accelerator
    cpus: int
    memory_mib: int
    devices: tuple[Device, ...] = field(default_factory=tuple)
    kernel: KernelBoot | None = None
    binary: str = "qemu-system-x86_64"
    tcg_tb_size_mib: int | None = None
    panic_action: Literal["shutdown", "exit-failure", "pause", "none"] = "exit-failure"
    start_paused: bool = False

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise ValueError(f"a VM needs at least one vCPU, not {self.cpus}")
        if self.memory_mib < 16:
            raise ValueError(f"{self.memory_mib} MiB is too little memory for a VM")
        if self.machine == "microvm" and self.kernel is None:
            raise ValueError("microvm has no firmware that boots a disk: it needs a kernel")

    @property
    def transport(self) -> Transport:
        return Transport.MMIO if self.machine == "microvm" else Transport.PCI

    def machine_args(self) -> list[str]:
        if self.machine == "microvm":
            # ACPI stays on: the cloud kernel lacks virtio-mmio command-line devices and finds them
            # through ACPI; the ISA serial port carries the console.
            machine = "microvm,acpi=on,isa-serial=on,rtc=on,pit=on,pic=off"
        else:
            machine = "q35"
        accel: str = self.accel
        if self.accel == "tcg" and self.tcg_tb_size_mib is not None:
            accel += f",tb-size={self.tcg_tb_size_mib}"
        return ["-machine", machine, "-accel", accel]

    def argv(self) -> list[str]:
        argv = [
            self.binary,
            "-name", f"guest={keyval_escape(self.name)},debug-threads=on",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-sandbox", SANDBOX,
            "-msg", "timestamp=on",
            *self.machine_args(),
        ]
        if self.accel == "kvm":
            argv += ["-cpu", "host"]
        argv += [
            "-smp", str(self.cpus),
            "-m", f"{self.memory_mib}M",
            "-action", f"panic={self.panic_action}",
        ]
        if self.kernel is not None:
            argv += self.kernel.args()
        for device in self.devices:
            argv += device.args()
        if self.start_paused:
            argv.append("-S")
        return argv
