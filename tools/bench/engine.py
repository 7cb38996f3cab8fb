"""Benchmark of the VM engine with the tiny guest: start latency split and QEMU's memory.

For each boot mode (q35 from the QCOW2 disk, q35 and microvm by direct kernel boot) it starts the
guest N times through ``qmprt.vm.VM.start`` and reports medians of:

- prepare:  qmprt's own work before QEMU: overlay and seed ISO (what the pod layer does per container)
- pre-exec: VM.start's work until QEMU is exec'd (sockets, argv, state files, cgroup, fork+exec)
- boot:     from QEMU's exec to the guest's ready marker on the console (console pump polls every 20 ms)
- total:    prepare + pre-exec + boot
and QEMU's RSS once the guest is up (128 MiB guest).

Then, for guests of --memory sizes (q35, direct kernel boot): QEMU's RSS, the part of it that is guest
RAM the guest touched (the RSS of the guest-RAM mapping in /proc/PID/smaps), the difference (the
per-VM host overhead), and the time ``VM.pin`` takes to pin every QEMU thread to a cpuset.
Output: tables, and JSON with --json FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from common import environment, headline, summaries

from qmprt import cgroups
from qmprt.cloudinit import SeedSpec
from qmprt.vm import accel
from qmprt.vm.machine import VM
from tests.integration.guests import BOOT_MODES, TinyGuest, tiny_guest, vm_config

CGROUP_ROOT = f"qmprt-bench-engine-{os.getpid()}"


def remove_cgroup_root(driver: cgroups.CgroupDriver) -> None:
    if driver.exists(CGROUP_ROOT):
        driver.open(CGROUP_ROOT).delete()


async def one_boot(
    mode: str, index: int, work: Path, run_root: Path, driver: cgroups.CgroupDriver, accel_name: str,
    guest: TinyGuest | None = None, rss_settle_s: float | None = 1.0,
) -> dict[str, float]:
    """One boot of the tiny guest through ``VM.start``: the start split in ms, and QEMU's RSS (MiB)
    ``rss_settle_s`` after the ready marker (None: RSS not taken)."""
    guest = guest or tiny_guest()
    vm_id = f"bench-{mode}-{index}"
    state_dir = work / vm_id
    t0 = time.monotonic()
    config = vm_config(guest, state_dir, vm_id, mode, SeedSpec(instance_id=vm_id, hostname=vm_id), memory_mib=128)
    config = dataclasses.replace(config, accel=accel_name)  # type: ignore[arg-type]
    prepared = time.monotonic()
    cgroup = driver.create(f"{CGROUP_ROOT}/{vm_id}")
    vm = await VM.start(config, state_dir, run_root / vm_id, cgroup=cgroup)
    try:
        await vm.wait_for_console(guest.ready_marker, 120)
        ready = time.monotonic()
        rss = None
        if rss_settle_s is not None:
            await asyncio.sleep(rss_settle_s)
            assert vm.status.pid is not None
            rss = psutil.Process(vm.status.pid).memory_info().rss
    finally:
        await vm.stop(grace=0)
    figures = {
        "prepare_ms": (prepared - t0) * 1000,
        "pre_exec_ms": (vm.timings.spawned - vm.timings.begin) * 1000,
        "boot_ms": (ready - vm.timings.spawned) * 1000,
        "total_ms": (ready - t0) * 1000,
    }
    if rss is not None:
        figures["rss_mib"] = rss / (1 << 20)
    return figures


def guest_ram_rss(pid: int, guest_bytes: int) -> int:
    """RSS of the anonymous mapping that holds guest RAM (the one whose size is the guest's RAM)."""
    size_kib = guest_bytes // 1024
    rss = 0
    current_size = None
    for line in open(f"/proc/{pid}/smaps"):
        if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
            current_size = None
        elif line.startswith("Size:"):
            current_size = int(line.split()[1])
        elif line.startswith("Rss:") and current_size == size_kib:
            rss = max(rss, int(line.split()[1]) * 1024)
    return rss


async def overhead_for(
    memory_mib: int, index: int, work: Path, run_root: Path, driver: cgroups.CgroupDriver, accel_name: str,
    tb_size_mib: int | None = None,
) -> dict[str, float]:
    guest = tiny_guest()
    vm_id = f"bench-mem-{memory_mib}-{tb_size_mib}-{index}"
    state_dir = work / vm_id
    config = vm_config(guest, state_dir, vm_id, "q35-direct", SeedSpec(instance_id=vm_id, hostname=vm_id), memory_mib=memory_mib)
    config = dataclasses.replace(config, accel=accel_name, tcg_tb_size_mib=tb_size_mib)  # type: ignore[arg-type]
    cgroup = driver.create(f"{CGROUP_ROOT}/{vm_id}")
    began = time.monotonic()
    vm = await VM.start(config, state_dir, run_root / vm_id, cgroup=cgroup)
    try:
        await vm.wait_for_console(guest.ready_marker, 120)
        boot_ms = (time.monotonic() - began) * 1000
        report = await vm.pin(f"0-{(os.cpu_count() or 1) - 1}")
        await asyncio.sleep(1.0)
        assert vm.status.pid is not None
        rss = psutil.Process(vm.status.pid).memory_info().rss
        guest_rss = guest_ram_rss(vm.status.pid, memory_mib << 20)
    finally:
        await vm.stop(grace=0)
    return {
        "rss_mib": rss / (1 << 20),
        "guest_touched_mib": guest_rss / (1 << 20),
        "overhead_mib": (rss - guest_rss) / (1 << 20),
        "pin_ms": report.seconds * 1000,
        "boot_ms": boot_ms,
    }


async def run(
    runs: int, modes: list[str], memory_sizes: list[int] | None = None, tb_sizes: list[int] | None = None
) -> dict[str, object]:
    choice = accel.detect()
    driver = cgroups.detect()
    work = Path(tempfile.mkdtemp(prefix="qmprt-bench-"))
    run_root = Path(tempfile.mkdtemp(prefix="qb-", dir="/tmp"))
    results: dict[str, object] = {}
    try:
        for mode in modes:
            samples = [await one_boot(mode, i, work, run_root, driver, choice.accel) for i in range(runs)]
            results[mode] = summaries(samples)
        overheads = {}
        for memory_mib in memory_sizes or []:
            samples = [await overhead_for(memory_mib, i, work, run_root, driver, choice.accel) for i in range(max(1, runs // 2))]
            overheads[str(memory_mib)] = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
        tb_curve = {}
        for tb_size in tb_sizes or []:
            samples = [await overhead_for(128, i, work, run_root, driver, choice.accel, tb_size) for i in range(runs)]
            tb_curve[str(tb_size)] = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(run_root, ignore_errors=True)
        remove_cgroup_root(driver)
    return {
        **environment(),
        "runs": runs,
        "modes": results,
        "memory": overheads,
        "tb_size": tb_curve,
    }


def table(report: dict[str, object]) -> str:
    lines = [
        f"engine benchmark: {headline(report)}",
        f"medians over {report['runs']} boots of the tiny guest, 128 MiB, 1 vCPU",
        f"{'mode':<16}{'prepare ms':>11}{'pre-exec ms':>12}{'boot ms':>9}{'total ms':>10}{'total p95':>10}{'QEMU RSS MiB':>13}",
    ]
    modes = report["modes"]
    assert isinstance(modes, dict)
    for mode, figures in modes.items():
        lines.append(
            f"{mode:<16}{figures['prepare_ms']['median']:>11.1f}{figures['pre_exec_ms']['median']:>12.1f}"
            f"{figures['boot_ms']['median']:>9.0f}{figures['total_ms']['median']:>10.0f}"
            f"{figures['total_ms']['p95']:>10.0f}{figures['rss_mib']['median']:>13.0f}"
        )
    memory = report.get("memory") or {}
    assert isinstance(memory, dict)
    if memory:
        lines += ["", "per-VM host memory (q35, direct boot, medians) and thread pinning",
                  f"{'guest MiB':<10}{'QEMU RSS MiB':>13}{'guest RAM touched':>18}{'overhead MiB':>13}{'pin ms':>8}"]
        for size, figures in memory.items():
            lines.append(f"{size:<10}{figures['rss_mib']:>13.0f}{figures['guest_touched_mib']:>18.0f}"
                         f"{figures['overhead_mib']:>13.0f}{figures['pin_ms']:>8.1f}")
    curve = report.get("tb_size") or {}
    assert isinstance(curve, dict)
    if curve:
        lines += ["", "TCG translation cache (tb-size) against boot time and overhead, 128 MiB guest, medians",
                  f"{'tb-size MiB':<12}{'boot ms':>9}{'QEMU RSS MiB':>13}{'overhead MiB':>13}"]
        for size, figures in curve.items():
            lines.append(f"{size:<12}{figures['boot_ms']:>9.0f}{figures['rss_mib']:>13.0f}{figures['overhead_mib']:>13.0f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modes", default=",".join(BOOT_MODES))
    parser.add_argument("--memory", default="128,512,2048", help="guest sizes (MiB) for the overhead table; '' skips it")
    parser.add_argument("--tb-sizes", default="", help="TCG tb-size values (MiB) for the boot/overhead curve, e.g. 16,32,64,128")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    sizes = [int(size) for size in args.memory.split(",") if size]
    tb_sizes = [int(size) for size in args.tb_sizes.split(",") if size]
    report = asyncio.run(run(args.runs, [m for m in args.modes.split(",") if m], sizes, tb_sizes))
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
