"""Templates at the engine level: the tiny guest booted to its template point, paused and saved
(RAM in a shared file, device state by QMP migration), then two clones restored from it at once, each
taking its own identity through the exec helper.

The clones must be different machines: hostnames, machine-ids, random streams, files; and the template's
RAM file must be exactly what it was (the clones map it private).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from pathlib import Path

from qmprt import cgroups
from qmprt.cloudinit import SeedSpec, seed_files
from qmprt.cloudinit.iso import SeedFormat, write_iso_files
from qmprt.cloudinit.template import TEMPLATE_MARKER, identity_script, template_seed_files
from qmprt.image import create_overlay
from qmprt.vm import snapshot
from qmprt.vm.config import DiskConfig, Snapshot, VMConfig, VMState
from qmprt.vm.console import CRILogWriter
from qmprt.vm.machine import VM

from .conftest import make_cgroup
from .guests import TinyGuest, vm_config
from .test_guest_exec import output_of
from .test_vm_engine import BOOT_TIMEOUT

VM_USER = (64917, 64917)


async def start(config: VMConfig, state_dir: Path, run_dir: Path, vms: list[VM], driver: cgroups.CgroupDriver) -> VM:
    cgroup = make_cgroup(driver, config.vm_id)
    try:
        vm = await VM.start(config, state_dir, run_dir / config.vm_id, cgroup=cgroup,
                            log_writer=CRILogWriter(state_dir.parent / f"{config.vm_id}.log"))
    except BaseException:
        cgroup.kill()
        cgroup.delete()
        raise
    vms.append(vm)
    return vm


async def build_template(tiny: TinyGuest, directory: Path, run_dir: Path, vms: list[VM], driver: cgroups.CgroupDriver,
                         vm_id: str) -> VMConfig:
    """The template's files in ``directory`` (overlay, seed, ram, state); the config clones start from."""
    seed = directory / "seed.iso"
    base = vm_config(tiny, directory, vm_id, "q35-direct")
    write_iso_files(template_seed_files(), seed, SeedFormat.NOCLOUD)
    config = dataclasses.replace(
        base, seed=DiskConfig(str(seed), "raw", read_only=True, serial="cidata"),
        snapshot=Snapshot("save", str(directory / "ram"), str(directory / "state")),
        run_as=VM_USER,  # as pods run: QEMU drops root and sits in its chroot once it has opened its files
    )
    vm = await start(config, directory / "vm", run_dir, vms, driver)
    answer = await snapshot.finish_template(vm, TEMPLATE_MARKER, BOOT_TIMEOUT)
    assert answer["status"] == "completed" and vm.status.state == VMState.EXITED
    assert (directory / "ram").stat().st_size == config.memory_mib << 20
    assert 0 < (directory / "state").stat().st_size < 4 << 20, "the stream holds devices, not the RAM"
    return config


async def clone(template: VMConfig, directory: Path, run_dir: Path, vms: list[VM], driver: cgroups.CgroupDriver,
                vm_id: str, seed: SeedSpec, ready_marker: str) -> VM:
    directory.mkdir()
    overlay = directory / "overlay.qcow2"
    create_overlay(template.root_disk.path, "qcow2", overlay)  # over the template's frozen disk
    assert template.snapshot is not None
    config = dataclasses.replace(
        template, vm_id=vm_id, root_disk=DiskConfig(str(overlay), "qcow2"),
        snapshot=dataclasses.replace(template.snapshot, role="restore"),
    )
    vm = await start(config, directory / "vm", run_dir, vms, driver)
    await snapshot.take_identity(vm.guest_exec, identity_script(seed_files(seed)), 60)
    await vm.wait_for_console(ready_marker, BOOT_TIMEOUT)
    return vm


async def run(vm: VM, *argv: str) -> str:
    process = await vm.guest_exec.spawn(list(argv))
    out, err = await output_of(process)
    assert await process.wait() == 0, (argv, err)
    return out.decode()


async def test_two_clones_of_one_template_are_two_machines(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    template_dir = tmp_path / "template"
    template = await build_template(tiny, template_dir, run_dir, vms, cgroup_driver, f"{vm_tag}-tpl")
    ram_digest = hashlib.sha256((template_dir / "ram").read_bytes()).hexdigest()

    clones = await asyncio.gather(*(
        clone(template, tmp_path / f"clone{i}", run_dir, vms, cgroup_driver, f"{vm_tag}-c{i}",
              SeedSpec(instance_id=f"{vm_tag}-instance-{i}", hostname=f"clone-{i}"), tiny.ready_marker)
        for i in range(2)
    ))
    seen = []
    for index, vm in enumerate(clones):
        hostname = (await run(vm, "hostname")).strip()
        machine_id = (await run(vm, "cat", "/etc/machine-id")).strip()
        uuids = await run(vm, "sh", "-c", "for i in 1 2 3; do cat /proc/sys/kernel/random/uuid; done")
        assert hostname == f"clone-{index}" and len(machine_id) == 32
        seen.append((hostname, machine_id, uuids))
    assert len({item[1] for item in seen}) == 2, "machine-ids differ"
    assert seen[0][2] != seen[1][2] and not set(seen[0][2].split()) & set(seen[1][2].split()), "random streams differ"

    await run(clones[0], "sh", "-c", "echo mine > /root/only-in-clone-0; sync")
    probe = await clones[1].guest_exec.spawn(["test", "-e", "/root/only-in-clone-0"])
    await output_of(probe)
    assert await probe.wait() == 1, "a file written in one clone is absent in the other"
    clock = int((await run(clones[1], "date", "+%s")).strip())
    assert abs(clock - time.time()) < 30, "the clone's clock was set to the host's, not left at the template's"

    for vm in clones:
        await vm.stop(grace=30)
    assert hashlib.sha256((template_dir / "ram").read_bytes()).hexdigest() == ram_digest, "the template is unchanged"
