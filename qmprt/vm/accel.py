"""Choosing the accelerator: KVM only when it can really run a guest, TCG otherwise.

A ``/dev/kvm`` that opens is not enough: nested or software-backed KVM (``kvm_pvm``) answers the API
but cannot run a normal guest (QEMU aborts setting MSRs, or the guest dies in emulation). qmprt uses KVM
when the device opens read-write, the CPU advertises hardware virtualisation (vmx/svm) and no
software-only KVM module is loaded. ``QMPRT_ACCEL`` or the config can force either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Accelerator = Literal["kvm", "tcg"]
SOFTWARE_KVM_MODULES = ("kvm_pvm",)


@dataclass(frozen=True)
class AccelChoice:
    accel: Accelerator
    reason: str


def _cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def detect(
    override: str | None = None,
    *,
    dev_kvm: str = "/dev/kvm",
    cpuinfo_path: str = "/proc/cpuinfo",
    modules_dir: str = "/sys/module",
) -> AccelChoice:
    wanted = override or os.environ.get("QMPRT_ACCEL") or "auto"
    if wanted not in ("auto", "kvm", "tcg"):
        raise ValueError(f"accelerator must be auto, kvm or tcg, not {wanted!r}")
    if wanted != "auto":
        return AccelChoice(wanted, "forced by configuration")  # type: ignore[arg-type]
    try:
        fd = os.open(dev_kvm, os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
    except OSError as err:
        return AccelChoice("tcg", f"{dev_kvm} unusable: {err.strerror}")
    flags = _cpu_flags(Path(cpuinfo_path).read_text())
    if not flags & {"vmx", "svm"}:
        return AccelChoice("tcg", "the CPU advertises no vmx/svm: KVM here is not hardware-backed")
    for module in SOFTWARE_KVM_MODULES:
        if Path(modules_dir, module).exists():
            return AccelChoice("tcg", f"{module} is loaded: KVM is a software hypervisor here")
    return AccelChoice("kvm", "hardware virtualisation available")


def host_tsc_khz(cpuinfo_path: str = "/proc/cpuinfo") -> int | None:
    """The host TSC frequency in kHz, for ``tsc_early_khz=`` on microvm guests under TCG."""
    tsc = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
    if tsc.exists():
        try:
            return int(tsc.read_text().strip())
        except ValueError:
            pass
    for line in Path(cpuinfo_path).read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":", 1)[1]) * 1000)
    return None
