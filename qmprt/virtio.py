"""Virtio transports: how a virtio device reaches the guest (PCI on q35, MMIO on microvm).

It sits low (beside ``qmprt.osutil``) so that the engine (``qmprt.vm``) and the volumes
(``qmprt.volumes``), which must not import each other, name devices with the same type.
"""

from __future__ import annotations

from enum import Enum


class Transport(str, Enum):
    """How virtio devices reach the guest: PCI on q35, MMIO on microvm."""

    PCI = "pci"
    MMIO = "mmio"

    @classmethod
    def for_machine(cls, machine: str) -> Transport:
        """The transport of QEMU machine type ``machine``: MMIO on microvm, else PCI."""
        return cls.MMIO if machine == "microvm" else cls.PCI

    def virtio(self, kind: str) -> str:
        """``virtio-blk`` → ``virtio-blk-pci`` or ``virtio-blk-device``."""
        return f"{kind}-pci" if self is Transport.PCI else f"{kind}-device"
