"""Benchmark of VM templates at the engine level (``qmprt.vm``), with the tiny guest, 128 MiB, 1 vCPU.

1. Cold: --runs boots (q35, direct kernel boot, a seed ISO): VM.start until the ready marker.
2. Template: one build (boot to the template point, pause, save), then --runs clones one after another,
   split into restore (VM.start with -incoming until the guest runs), identity (the identity script
   through the exec helper) and ready (until the guest's ready marker), and the total.
3. At once: --at-once counts of clones started together: time until all are ready.
4. Density: --density clones running, then as many cold VMs: the summed PSS of their QEMUs
   (/proc/PID/smaps_rollup), taken --settle seconds after the last is ready.

Every VM runs as it does in a pod: its own cgroup, QEMU dropping root into its chroot.
Output: tables, and JSON with --json FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common import environment, format_table, headline, summaries

from qmprt import cgroups
from qmprt.cloudinit import SeedSpec, seed_files
from qmprt.cloudinit.iso import SeedFormat, write_iso_files
from qmprt.cloudinit.template import TEMPLATE_MARKER, identity_script, template_seed_files
from qmprt.image import create_overlay
from qmprt.vm import accel, snapshot
from qmprt.vm.config import DiskConfig, Snapshot, VMConfig
from qmprt.vm.machine import VM
from tests.integration.guests import TinyGuest, tiny_guest, vm_config

CGROUP_ROOT = f"qmprt-bench-templates-{os.getpid()}"
VM_USER = (64918, 64918)
TIMEOUT = 300


@dataclasses.dataclass
class Bench:
    guest: TinyGuest
    work: Path
    run_root: Path
    driver: cgroups.CgroupDriver
    accel: str
    running: list[VM] = dataclasses.field(default_factory=list)

    async def start(self, config: VMConfig) -> VM:
        cgroup = self.driver.create(f"{CGROUP_ROOT}/{config.vm_id}")
        vm = await VM.start(config, self.work / config.vm_id / "vm", self.run_root / config.vm_id, cgroup=cgroup)
        self.running.append(vm)
        return vm

    def base(self, vm_id: str, seed: SeedSpec | None) -> VMConfig:
        config = vm_config(self.guest, self.work / vm_id, vm_id, "q35-direct", seed, memory_mib=128)
        return dataclasses.replace(config, accel=self.accel, run_as=VM_USER)  # type: ignore[arg-type]

    async def cold(self, index: int) -> tuple[VM, dict[str, float]]:
        t0 = time.monotonic()
        vm_id = f"cold-{index}"
        vm = await self.start(self.base(vm_id, SeedSpec(instance_id=vm_id, hostname=vm_id)))
        await vm.wait_for_console(self.guest.ready_marker, TIMEOUT)
        return vm, {"total_ms": (time.monotonic() - t0) * 1000}

    async def template(self) -> tuple[VMConfig, float]:
        t0 = time.monotonic()
        directory = self.work / "template"
        config = self.base("template", None)
        write_iso_files(template_seed_files(), directory / "seed.iso", SeedFormat.NOCLOUD)
        config = dataclasses.replace(
            config, seed=DiskConfig(str(directory / "seed.iso"), "raw", read_only=True, serial="cidata"),
            snapshot=Snapshot("save", str(directory / "ram"), str(directory / "state")),
        )
        vm = await self.start(config)
        await snapshot.finish_template(vm, TEMPLATE_MARKER, TIMEOUT)
        return config, time.monotonic() - t0

    async def clone(self, template: VMConfig, index: int) -> tuple[VM, dict[str, float]]:
        t0 = time.monotonic()
        vm_id = f"clone-{index}"
        (self.work / vm_id).mkdir()
        overlay = self.work / vm_id / "overlay.qcow2"
        create_overlay(template.root_disk.path, "qcow2", overlay)
        assert template.snapshot is not None
        config = dataclasses.replace(template, vm_id=vm_id, root_disk=DiskConfig(str(overlay), "qcow2"),
                                     snapshot=dataclasses.replace(template.snapshot, role="restore"))
        vm = await self.start(config)
        t1 = time.monotonic()
        script = identity_script(seed_files(SeedSpec(instance_id=vm_id, hostname=vm_id)))
        await snapshot.take_identity(vm.guest_exec, script, 60)
        t2 = time.monotonic()
        await vm.wait_for_console(self.guest.ready_marker, TIMEOUT)
        t3 = time.monotonic()
        return vm, {"restore_ms": (t1 - t0) * 1000, "identity_ms": (t2 - t1) * 1000,
                    "ready_ms": (t3 - t2) * 1000, "total_ms": (t3 - t0) * 1000}

    async def stop_all(self) -> None:
        await asyncio.gather(*(vm.stop(grace=0) for vm in self.running), return_exceptions=True)
        self.running.clear()


def pss_mib(vms: list[VM]) -> float:
    total = 0
    for vm in vms:
        for line in open(f"/proc/{vm.status.pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


async def at_once(count: int, start: Callable[[int], Awaitable[tuple[VM, dict[str, float]]]], first: int) -> float:
    t0 = time.monotonic()
    results = await asyncio.gather(*(start(first + i) for i in range(count)), return_exceptions=True)
    elapsed = (time.monotonic() - t0) * 1000
    for result in results:  # every start has ended (its VM is in Bench.running): now the first failure
        if isinstance(result, BaseException):
            raise result
    return elapsed


async def run(runs: int, counts: list[int], density: int, settle: float) -> dict[str, Any]:
    bench = Bench(tiny_guest(), Path(tempfile.mkdtemp(prefix="qmprt-bench-tpl-", dir="/var/tmp")),
                  Path(tempfile.mkdtemp(prefix="qbt-", dir="/tmp")), cgroups.detect(), accel.detect().accel)
    report: dict[str, Any] = {**environment(), "runs": runs}
    try:
        cold = []
        for index in range(runs):
            vm, figures = await bench.cold(index)
            await vm.stop(grace=0)
            cold.append(figures)
        template, build_s = await bench.template()
        clones = []
        for index in range(runs):
            vm, figures = await bench.clone(template, index)
            await vm.stop(grace=0)
            clones.append(figures)
        report.update(cold=summaries(cold), clone=summaries(clones), template_build_s=build_s,
                      template_state_kib=Path(template.snapshot.state).stat().st_size / 1024)  # type: ignore[union-attr]
        first = 1000
        report["at_once_ms"] = {}
        for count in counts:
            report["at_once_ms"][str(count)] = await at_once(count, lambda i: bench.clone(template, i), first)
            first += count
            await bench.stop_all()
        if density:
            await at_once(density, lambda i: bench.clone(template, i), 5000)
            await asyncio.sleep(settle)
            clone_pss = pss_mib(bench.running)
            await bench.stop_all()
            await at_once(density, bench.cold, 6000)
            await asyncio.sleep(settle)
            cold_pss = pss_mib(bench.running)
            await bench.stop_all()
            report["density"] = {"vms": density, "clone_pss_mib": clone_pss, "cold_pss_mib": cold_pss}
    finally:
        await bench.stop_all()
        shutil.rmtree(bench.work, ignore_errors=True)
        shutil.rmtree(bench.run_root, ignore_errors=True)
        if bench.driver.exists(CGROUP_ROOT):
            bench.driver.open(CGROUP_ROOT).delete()
    return report


def table(report: dict[str, Any]) -> str:
    cold, clone = report["cold"], report["clone"]
    rows = [("cold boot", cold["total_ms"]["median"], cold["total_ms"]["p95"])]
    rows += [(f"clone: {key[:-3]}", clone[key]["median"], clone[key]["p95"])
             for key in ("restore_ms", "identity_ms", "ready_ms", "total_ms")]
    lines = [
        f"template benchmark: {headline(report)}",
        f"tiny guest, 128 MiB, 1 vCPU, q35 direct boot, {report['runs']} runs; template built in "
        f"{report['template_build_s']:.1f} s, device state {report['template_state_kib']:.0f} KiB",
        format_table(("start", "median ms", "p95 ms"), rows),
        f"clone/cold median: {clone['total_ms']['median'] / cold['total_ms']['median']:.2f}",
        format_table(("clones at once", "all ready ms"), [(k, v) for k, v in report["at_once_ms"].items()]),
    ]
    if "density" in report:
        d = report["density"]
        lines.append(f"{d['vms']} VMs running, summed QEMU PSS: clones {d['clone_pss_mib']:.0f} MiB, cold "
                     f"{d['cold_pss_mib']:.0f} MiB ({d['clone_pss_mib'] / d['cold_pss_mib']:.0%})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--at-once", default="1,5,10,20", help="clone counts started together")
    parser.add_argument("--density", type=int, default=20, help="VMs running for the PSS figure (0 skips it)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before PSS is read")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    counts = [int(count) for count in args.at_once.split(",") if count]
    report = asyncio.run(run(args.runs, counts, args.density, args.settle))
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
