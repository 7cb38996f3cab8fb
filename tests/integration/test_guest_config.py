"""Guest configuration and storage on a real guest: one tiny VM booted with everything at once.

The seed carries the hostname, a hostile environment value, an SSH key, DNS, a Secret-like 0400 file,
a 0640 file, user-data merged in, and the mount of a read-only virtiofs share; the VM gets that
share (virtiofsd in its own cgroup), a loop device with a serial and an ephemeral 64 MiB qcow2.
Everything is read back through the guest agent.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmprt.cloudinit import DNSConfig, SeedFile, SeedMount, SeedSpec
from qmprt.virtio import Transport
from qmprt.vm.console import CRILogWriter
from qmprt.vm.machine import VM
from qmprt.volumes import (
    Attachment,
    BlockVolumes,
    EphemeralVolume,
    HostBlockVolume,
    VirtiofsDaemon,
    VirtiofsShare,
    VirtiofsShares,
)

from .conftest import make_cgroup
from .guests import vm_config

BOOT_TIMEOUT = 90
HOSTILE = "it's \"quoted\" $HOME `id` \\ back\nnew line\ttab ünïcödé 🚀 ; rm -rf / #"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq2Wm2n8uYcKqY0cX9qJ7x1lq0wq7m1mM6d5p3Q9g5B test@qmprt"
LOOP_BYTES = 8 * 1024 * 1024
EPHEMERAL_BYTES = 64 * 1024 * 1024
USER_DATA = b"""#cloud-config
write_files:
  - path: /etc/user-note
    content: |
      from the user's "own" cloud-config
    permissions: '0644'
"""


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    backing = tmp_path / "loop.img"
    with open(backing, "wb") as image:
        image.truncate(LOOP_BYTES)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


async def test_guest_configuration_and_storage(
    tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver, loop_device
) -> None:
    vm_id = f"{vm_tag}-cfg"
    state_dir = tmp_path / vm_id
    state_dir.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "app.conf").write_text("answer = 42\n")

    seed = SeedSpec(
        instance_id=vm_id,
        hostname="configured-guest",
        env={"HOSTILE": HOSTILE},
        files=(
            SeedFile("/run/secrets/token", b"s3cr3t-token\n", 0o400),
            SeedFile("/etc/app/settings", b"mode=fast\n", 0o640),
        ),
        dns=DNSConfig(
            servers=("10.96.0.10", "fd00::10"),
            searches=("default.svc.cluster.local", "svc.cluster.local"),
            options=("ndots:5", "edns0"),
        ),
        ssh_authorized_keys=(SSH_KEY,),
        mounts=(SeedMount("config", "/etc/config", read_only=True),),
        user_data=USER_DATA,
    )
    share = VirtiofsShare("config", "config", str(shared), str(run_dir / "fs-config.sock"), read_only=True)
    disk = HostBlockVolume.for_path(loop_device, Attachment("raw", serial="qmprt-raw-1"))
    assert disk.driver == "host_device"
    data = await EphemeralVolume.ensure(state_dir, Attachment("data", serial="qmprt-data-1"), EPHEMERAL_BYTES)
    assert (Path(data.path).stat().st_mode & 0o777) == 0o600
    # ensure() again finds the same disk (a restarted container keeps its data).
    assert await EphemeralVolume.ensure(state_dir, data.attachment, EPHEMERAL_BYTES) == data

    config = vm_config(tiny, state_dir, vm_id, "q35-direct", seed)
    config = dataclasses.replace(
        config, shared_memory=True,
        extra_devices=(BlockVolumes((disk, data), Transport.PCI), VirtiofsShares((share,), Transport.PCI)),
    )
    fs_cgroup = make_cgroup(cgroup_driver, f"{vm_id}-fs")
    vm_cgroup = make_cgroup(cgroup_driver, vm_id)
    daemon = await VirtiofsDaemon.start(share, state_dir / "virtiofsd.log", exec_prefix=fs_cgroup.exec_prefix())
    vm: VM | None = None
    try:
        assert daemon.running and daemon.pid in fs_cgroup.pids()
        adopted = VirtiofsDaemon.adopt(daemon.to_json())
        assert adopted.running and adopted.share == share
        log_writer = CRILogWriter(tmp_path / f"{vm_id}.log")
        vm = await VM.start(config, state_dir, run_dir / vm_id, cgroup=vm_cgroup, log_writer=log_writer)
        vms.append(vm)
        try:
            await check_guest(vm, tiny.ready_marker, shared, loop_device, data)
        finally:
            await vm.stop(grace=30)
    finally:
        await daemon.stop()
        assert not daemon.running
        assert not Path(share.socket_path).exists()
        # A VM that started removes its own cgroup when it exits.
        for cgroup in (fs_cgroup,) if vm is not None else (fs_cgroup, vm_cgroup):
            cgroup.kill()
            cgroup.delete()
    data.delete()
    assert not Path(data.path).exists()


async def check_guest(vm: VM, ready_marker: str, shared: Path, loop_device: str, data: EphemeralVolume) -> None:
    await vm.wait_for_console(ready_marker, BOOT_TIMEOUT)

    async def run(script: str) -> tuple[int, str]:
        result = await vm.agent.exec(["sh", "-c", script], timeout=30)
        return result.exit_code, (result.stdout + result.stderr).decode()

    assert await run("hostname") == (0, "configured-guest\n")
    assert await run('set -a; . /etc/cloud/environment; printf %s "$HOSTILE"') == (0, HOSTILE)
    assert await run("cat /root/.ssh/authorized_keys; stat -c %a /root/.ssh/authorized_keys") == (
        0, f"{SSH_KEY}\n600\n"
    )
    assert await run("cat /etc/resolv.conf") == (
        0,
        "nameserver 10.96.0.10\nnameserver fd00::10\n"
        "search default.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\n",
    )
    assert await run("cat /run/secrets/token; stat -c '%a %u' /run/secrets/token") == (0, "s3cr3t-token\n400 0\n")
    assert await run("cat /etc/app/settings; stat -c %a /etc/app/settings") == (0, "mode=fast\n640\n")
    assert await run("cat /etc/user-note") == (0, "from the user's \"own\" cloud-config\n")

    # The share: readable, not writable in the guest, and not even after the guest remounts it
    # read-write (the host's bind mount is read-only).
    assert await run("cat /etc/config/app.conf") == (0, "answer = 42\n")
    assert await run("grep -c '^config /etc/config virtiofs ro[, ]' /proc/mounts") == (0, "1\n")
    code, _ = await run("echo x > /etc/config/new")
    assert code != 0
    code, output = await run("mount -o remount,rw /etc/config && echo y > /etc/config/app.conf")
    assert code != 0 and "Read-only" in output, output
    assert sorted(os.listdir(shared)) == ["app.conf"]
    assert (shared / "app.conf").read_text() == "answer = 42\n"

    # Disks by serial, with the sizes the host gave them.
    size_of = 'cat /sys/class/block/$(basename $(readlink -f {}))/size'
    assert await run(size_of.format("/dev/disk/by-id/virtio-qmprt-raw-1")) == (0, f"{LOOP_BYTES // 512}\n")
    assert await run(size_of.format(data.attachment.guest_path)) == (0, f"{EPHEMERAL_BYTES // 512}\n")
    # The raw disk is the loop device: what the guest writes, the host reads.
    assert (await run("echo -n qmprt-was-here > /dev/disk/by-id/virtio-qmprt-raw-1 && sync"))[0] == 0
    with open(loop_device, "rb") as device:
        assert device.read(14) == b"qmprt-was-here"
