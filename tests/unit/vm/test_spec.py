"""Golden tests: the argv qmprt renders for a VM is exactly the expected list."""

import json

import pytest

from qmprt.vm.devices import Blockdev, KernelBoot, Transport, VirtioBlk
from qmprt.vm.machine import DiskConfig, VM, VMConfig
from qmprt.vm.spec import VMSpec

FDS = {"qmp": 3, "qmp-shell": 4, "qga": 5, "console": 6}

COMMON_HEAD = [
    "qemu-system-x86_64",
    "-name", "guest=ctr1,debug-threads=on",
    "-nodefaults", "-no-user-config", "-display", "none",
    "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-msg", "timestamp=on",
]
MONITORS_AND_CONSOLE = [
    "-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
    "-mon", "chardev=qmp,mode=control",
    "-chardev", "socket,id=qmp-shell,fd=4,server=on,wait=off",
    "-mon", "chardev=qmp-shell,mode=control",
    "-chardev", "socket,id=console,fd=6,server=on,wait=off,logfile=/s/console.raw,logappend=on",
    "-serial", "chardev:console",
]


def _disk_args(node: str, path: str, fmt: str, ro: bool, device: dict[str, object]) -> list[str]:
    blockdev = {
        "driver": fmt, "node-name": node, "read-only": ro,
        "file": {"driver": "file", "filename": path, "read-only": ro},
    }
    return ["-blockdev", json.dumps(blockdev, separators=(",", ":")),
            "-device", json.dumps(device, separators=(",", ":"))]


def test_q35_disk_boot_argv() -> None:
    config = VMConfig(
        vm_id="ctr1",
        root_disk=DiskConfig("/s/overlay.qcow2", "qcow2"),
        seed=DiskConfig("/s/seed.iso", "raw", read_only=True, serial="cidata"),
        memory_mib=256,
        cpus=2,
    )
    argv = VM.render(config, FDS, "/s/console.raw").argv()
    expected = COMMON_HEAD + [
        "-machine", "q35", "-accel", "tcg",
        "-smp", "2", "-m", "256M", "-action", "panic=exit-failure",
        *MONITORS_AND_CONSOLE,
        *_disk_args("root", "/s/overlay.qcow2", "qcow2", False,
                    {"driver": "virtio-blk-pci", "id": "blk-root", "drive": "root", "bootindex": 0}),
        *_disk_args("seed", "/s/seed.iso", "raw", True,
                    {"driver": "virtio-blk-pci", "id": "blk-seed", "drive": "seed", "serial": "cidata"}),
        "-device", '{"driver":"virtio-serial-pci","id":"vser0"}',
        "-chardev", "socket,id=qga,fd=5,server=on,wait=off",
        "-device", '{"driver":"virtserialport","id":"qga-port","bus":"vser0.0","chardev":"qga","name":"org.qemu.guest_agent.0"}',
        "-device", '{"driver":"virtio-rng-pci","id":"rng0"}',
        "-device", '{"driver":"pvpanic"}',
    ]
    assert argv == expected


def test_microvm_direct_kernel_argv() -> None:
    config = VMConfig(
        vm_id="ctr1",
        machine="microvm",
        root_disk=DiskConfig("/s/overlay.qcow2", "qcow2"),
        kernel=KernelBoot("/img/vmlinuz", "/img/initrd.img", ("console=ttyS0", "root=/dev/vda1")),
        tcg_tb_size_mib=64,
    )
    argv = VM.render(config, FDS, "/s/console.raw").argv()
    expected = COMMON_HEAD + [
        "-machine", "microvm,acpi=on,isa-serial=on,rtc=on,pit=on,pic=off", "-accel", "tcg,tb-size=64",
        "-smp", "1", "-m", "128M", "-action", "panic=exit-failure",
        "-kernel", "/img/vmlinuz", "-initrd", "/img/initrd.img", "-append", "console=ttyS0 root=/dev/vda1",
        *MONITORS_AND_CONSOLE,
        *_disk_args("root", "/s/overlay.qcow2", "qcow2", False,
                    {"driver": "virtio-blk-device", "id": "blk-root", "drive": "root"}),
        "-device", '{"driver":"virtio-serial-device","id":"vser0"}',
        "-chardev", "socket,id=qga,fd=5,server=on,wait=off",
        "-device", '{"driver":"virtserialport","id":"qga-port","bus":"vser0.0","chardev":"qga","name":"org.qemu.guest_agent.0"}',
        "-device", '{"driver":"virtio-rng-device","id":"rng0"}',
        "-device", '{"driver":"pvpanic"}',
    ]
    assert argv == expected


def test_kvm_uses_host_cpu() -> None:
    spec = VMSpec(name="x", machine="q35", accel="kvm", cpus=1, memory_mib=128)
    argv = spec.argv()
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-cpu") + 1] == "host"


def test_commas_in_paths_are_safe() -> None:
    blockdev = Blockdev("root", "/a,b/disk.qcow2", "qcow2")
    assert json.loads(blockdev.args()[1])["file"]["filename"] == "/a,b/disk.qcow2"
    spec = VMSpec(name="a,b", machine="q35", accel="tcg", cpus=1, memory_mib=128)
    assert spec.argv()[2] == "guest=a,,b,debug-threads=on"


def test_hotplug_arguments_match_the_command_line() -> None:
    device = VirtioBlk("blk-data", "data", Transport.PCI, serial="vol1")
    assert json.loads(device.args()[1]) == device.qmp_args()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpus": 0}, "at least one vCPU"),
        ({"memory_mib": 8}, "too little memory"),
        ({"machine": "microvm"}, "needs a kernel"),
    ],
    ids=["no-cpus", "tiny-memory", "microvm-without-kernel"],
)
def test_spec_rejects_nonsense(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"name": "x", "machine": "q35", "accel": "tcg", "cpus": 1, "memory_mib": 128}
    with pytest.raises(ValueError, match=message):
        VMSpec(**{**base, **kwargs})  # type: ignore[arg-type]


def test_config_json_round_trip() -> None:
    config = VMConfig(
        vm_id="c",
        root_disk=DiskConfig("/o.qcow2", "qcow2"),
        kernel=KernelBoot("/k", "/i", ("a", "b")),
        seed=DiskConfig("/seed.iso", "raw", True, "cidata"),
        extra_disks=(DiskConfig("/d.raw", "raw", serial="data0"),),
    )
    assert VMConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
