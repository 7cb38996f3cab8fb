"""A complete QEMU command line, rendered in one fixed order.

``VMSpec`` is the description of one emulator process: machine, accelerator, CPUs, memory and the
devices. It is pure data; file descriptors in it are the numbers QEMU will see (qmprt passes them with
``pass_fds`` and keeps the numbers). ``argv()`` is golden-tested.

Guest RAM comes from explicit memory backends: with one backend and no NUMA nodes it is the machine's
``memory-backend``; with guest NUMA nodes each node names its backend (``memdev``) and the backends
together hold all of ``memory_mib``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from qmprt.virtio import Transport
from qmprt.vm.devices import KernelBoot, MemoryBackend, NumaNode, keyval_escape

MachineType = Literal["q35", "microvm"]
Accelerator = Literal["kvm", "tcg"]

# Forbid what an emulator never needs: this is QEMU's own seccomp filter. QEMU installs it before it
# changes user (``-runas``), so a VM that drops root must keep setuid/setgid allowed; once QEMU runs
# as that user with no capabilities, and cannot exec (spawn=deny), it has no way back to root.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
SANDBOX_DROPPING_ROOT = "on,obsolete=deny,spawn=deny,resourcecontrol=deny"


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
    incoming_deferred: bool = False  # -incoming defer: the VM waits for migrate-incoming (a restore)
    memory_backends: tuple[MemoryBackend, ...] = ()
    numa_nodes: tuple[NumaNode, ...] = ()
    # After it has opened everything (disks, sockets, /dev/kvm, taps), QEMU chroots to ``chroot`` and
    # becomes ``run_as`` (uid, gid; no supplementary groups, no capabilities).
    run_as: tuple[int, int] | None = None
    chroot: str | None = None

    def __post_init__(self) -> None:
        if self.run_as is not None and (self.run_as[0] <= 0 or self.run_as[1] <= 0):
            raise ValueError(f"a VM's user and group must not be root, not {self.run_as}")
        if self.chroot is not None and (self.run_as is None or not self.chroot.startswith("/")):
            raise ValueError("a chroot needs an absolute directory and a user to drop to (root leaves a chroot)")
        if self.cpus < 1:
            raise ValueError(f"a VM needs at least one vCPU, not {self.cpus}")
        if self.memory_mib < 16:
            raise ValueError(f"{self.memory_mib} MiB is too little memory for a VM")
        if self.machine == "microvm" and self.kernel is None:
            raise ValueError("microvm has no firmware that boots a disk: it needs a kernel")
        self._check_memory()

    def _check_memory(self) -> None:
        if not self.memory_backends:
            if self.numa_nodes:
                raise ValueError("guest NUMA nodes need memory backends")
            return
        total = sum(backend.size_mib for backend in self.memory_backends)
        if total != self.memory_mib:
            raise ValueError(f"the memory backends hold {total} MiB, the VM has {self.memory_mib} MiB")
        if not self.numa_nodes:
            if len(self.memory_backends) != 1:
                raise ValueError("without guest NUMA nodes the VM's RAM is exactly one memory backend")
            return
        if self.machine == "microvm":
            raise ValueError("microvm gives the guest no NUMA topology (it has no SRAT table)")
        memdevs = sorted(node.memdev for node in self.numa_nodes)
        if memdevs != sorted(backend.id for backend in self.memory_backends):
            raise ValueError("each memory backend must belong to exactly one guest NUMA node")
        covered = sorted(cpu for node in self.numa_nodes for cpu in range(node.first_cpu, node.last_cpu + 1))
        if covered != list(range(self.cpus)):
            raise ValueError(f"the guest NUMA nodes must hold each of the {self.cpus} vCPUs exactly once")

    @property
    def transport(self) -> Transport:
        return Transport.for_machine(self.machine)

    def machine_args(self) -> list[str]:
        if self.machine == "microvm":
            # ACPI stays on: the cloud kernel lacks virtio-mmio command-line devices and finds them
            # through ACPI; the ISA serial port carries the console.
            machine = "microvm,acpi=on,isa-serial=on,rtc=on,pit=on,pic=off"
        else:
            machine = "q35"
        if self.memory_backends and not self.numa_nodes:
            machine += f",memory-backend={self.memory_backends[0].id}"
        accel: str = self.accel
        if self.accel == "tcg" and self.tcg_tb_size_mib is not None:
            accel += f",tb-size={self.tcg_tb_size_mib}"
        return ["-machine", machine, "-accel", accel]

    def argv(self) -> list[str]:
        argv = [
            self.binary,
            "-name", f"guest={keyval_escape(self.name)},debug-threads=on",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-sandbox", SANDBOX if self.run_as is None else SANDBOX_DROPPING_ROOT,
            "-msg", "timestamp=on",
            *self.machine_args(),
        ]
        if self.run_as is not None:
            argv += ["-runas", f"{self.run_as[0]}:{self.run_as[1]}"]
        if self.chroot is not None:
            argv += ["-chroot", self.chroot]
        if self.accel == "kvm":
            argv += ["-cpu", "host"]
        argv += [
            "-smp", str(self.cpus),
            "-m", f"{self.memory_mib}M",
        ]
        for backend in self.memory_backends:
            argv += backend.args()
        for node in self.numa_nodes:
            argv += node.args()
        argv += ["-action", f"panic={self.panic_action}"]
        if self.kernel is not None:
            argv += self.kernel.args()
        for device in self.devices:
            argv += device.args()
        if self.start_paused:
            argv.append("-S")
        if self.incoming_deferred:
            argv += ["-incoming", "defer"]
        return argv
