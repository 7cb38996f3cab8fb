"""Shared helpers for tests that boot the tiny guest: where it is, and how to make a VMConfig."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qmprt.cloudinit import SeedSpec, write_nocloud_iso
from qmprt.image.overlay import create_overlay
from qmprt.vm.accel import host_tsc_khz
from qmprt.vm.devices import KernelBoot
from qmprt.vm.config import DiskConfig, VMConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "images" / "out" / "tiny"


@dataclass(frozen=True)
class TinyGuest:
    directory: Path
    manifest: dict[str, object]

    @property
    def disk(self) -> Path:
        return self.directory / str(self.manifest["files"]["disk"])  # type: ignore[index]

    @property
    def kernel(self) -> Path:
        return self.directory / str(self.manifest["files"]["vmlinuz"])  # type: ignore[index]

    @property
    def initrd(self) -> Path:
        return self.directory / str(self.manifest["files"]["initrd"])  # type: ignore[index]

    @property
    def ready_marker(self) -> str:
        return str(self.manifest["ready_marker"])

    @property
    def kernel_version(self) -> str:
        return str(self.manifest["kernel_version"])

    def cmdline(self, machine: str) -> tuple[str, ...]:
        append = tuple(str(self.manifest["cmdline"]).split())
        if machine == "microvm":
            append += (f"tsc_early_khz={host_tsc_khz()}",)
        return append


def tiny_guest() -> TinyGuest:
    """The tiny guest, built (or found in the cache) by its recipe."""
    subprocess.run(["bash", str(ROOT / "images" / "build-tiny.sh")], check=True, capture_output=True)
    return TinyGuest(TINY, json.loads((TINY / "manifest.json").read_text()))


BOOT_MODES = {
    "q35-disk": ("q35", False),
    "q35-direct": ("q35", True),
    "microvm-direct": ("microvm", True),
}


def vm_config(
    guest: TinyGuest,
    state_dir: Path,
    vm_id: str,
    mode: str = "q35-direct",
    seed: SeedSpec | None = None,
    memory_mib: int = 128,
) -> VMConfig:
    """Overlay + seed in ``state_dir``, and the VMConfig that boots them in ``mode``."""
    machine, direct = BOOT_MODES[mode]
    state_dir.mkdir(parents=True, exist_ok=True)
    overlay = state_dir / "overlay.qcow2"
    create_overlay(guest.disk, "qcow2", overlay)
    seed_disk = None
    if seed is not None:
        write_nocloud_iso(seed, state_dir / "seed.iso")
        seed_disk = DiskConfig(str(state_dir / "seed.iso"), "raw", read_only=True, serial="cidata")
    kernel = KernelBoot(str(guest.kernel), str(guest.initrd), guest.cmdline(machine)) if direct else None
    return VMConfig(
        vm_id=vm_id,
        root_disk=DiskConfig(str(overlay), "qcow2"),
        machine=machine,  # type: ignore[arg-type]
        kernel=kernel,
        seed=seed_disk,
        memory_mib=memory_mib,
    )
