"""Golden tests: the argv qmprt renders for a VM is exactly the expected list."""

import dataclasses
import json

import pytest

from qmprt.virtio import Transport
from qmprt.errors import InvalidArgument
from qmprt.vm.config import DiskConfig, Snapshot, VMConfig
from qmprt.vm.devices import Blockdev, KernelBoot, MemoryBackend, NumaNode, VirtioBalloon, VirtioBlk
from qmprt.vm.machine import VM
from qmprt.vm.numa import HugepageConfig
from qmprt.vm.spec import VMSpec

FDS = {"qmp": 3, "qmp-shell": 4, "qga": 5, "console": 6, "exec": 7}

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
# What follows the disks of every q35 guest.
Q35_DEVICE_TAIL = [
    "-device", '{"driver":"virtio-serial-pci","id":"vser0"}',
    "-chardev", "socket,id=qga,fd=5,server=on,wait=off",
    "-device", '{"driver":"virtserialport","id":"qga-port","bus":"vser0.0","chardev":"qga","name":"org.qemu.guest_agent.0"}',
    "-chardev", "socket,id=exec,fd=7,server=on,wait=off",
    "-device", '{"driver":"virtserialport","id":"exec-port","bus":"vser0.0","chardev":"exec","name":"io.qmprt.exec.0"}',
    "-device", '{"driver":"virtio-rng-pci","id":"rng0"}',
    "-device", '{"driver":"virtio-balloon-pci","id":"balloon0","deflate-on-oom":true,"free-page-reporting":true}',
    "-device", '{"driver":"pvpanic"}',
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
        "-machine", "q35,memory-backend=mem0", "-accel", "tcg",
        "-smp", "2", "-m", "256M",
        "-object", '{"qom-type":"memory-backend-ram","id":"mem0","size":268435456}',
        "-action", "panic=exit-failure",
        *MONITORS_AND_CONSOLE,
        *_disk_args("root", "/s/overlay.qcow2", "qcow2", False,
                    {"driver": "virtio-blk-pci", "id": "blk-root", "drive": "root", "bootindex": 0}),
        *_disk_args("seed", "/s/seed.iso", "raw", True,
                    {"driver": "virtio-blk-pci", "id": "blk-seed", "drive": "seed", "serial": "cidata"}),
        *Q35_DEVICE_TAIL,
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
        "-machine", "microvm,acpi=on,isa-serial=on,rtc=on,pit=on,pic=off,memory-backend=mem0",
        "-accel", "tcg,tb-size=64",
        "-smp", "1", "-m", "128M",
        "-object", '{"qom-type":"memory-backend-ram","id":"mem0","size":134217728}',
        "-action", "panic=exit-failure",
        "-kernel", "/img/vmlinuz", "-initrd", "/img/initrd.img", "-append", "console=ttyS0 root=/dev/vda1",
        *MONITORS_AND_CONSOLE,
        *_disk_args("root", "/s/overlay.qcow2", "qcow2", False,
                    {"driver": "virtio-blk-device", "id": "blk-root", "drive": "root"}),
        "-device", '{"driver":"virtio-serial-device","id":"vser0"}',
        "-chardev", "socket,id=qga,fd=5,server=on,wait=off",
        "-device", '{"driver":"virtserialport","id":"qga-port","bus":"vser0.0","chardev":"qga","name":"org.qemu.guest_agent.0"}',
        "-chardev", "socket,id=exec,fd=7,server=on,wait=off",
        "-device", '{"driver":"virtserialport","id":"exec-port","bus":"vser0.0","chardev":"exec","name":"io.qmprt.exec.0"}',
        "-device", '{"driver":"virtio-rng-device","id":"rng0"}',
        "-device", '{"driver":"virtio-balloon-device","id":"balloon0","deflate-on-oom":true,"free-page-reporting":true}',
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
        ({"memory_backends": (MemoryBackend("mem0", 64),)}, "hold 64 MiB"),
        ({"memory_backends": (MemoryBackend("mem0", 64), MemoryBackend("mem1", 64))}, "exactly one memory backend"),
        ({"numa_nodes": (NumaNode(0, 0, 0, "mem0"),)}, "need memory backends"),
        ({"cpus": 2, "memory_backends": (MemoryBackend("mem0", 64), MemoryBackend("mem1", 64)),
          "numa_nodes": (NumaNode(0, 0, 0, "mem0"), NumaNode(1, 0, 0, "mem1"))}, "exactly once"),
        ({"cpus": 2, "memory_backends": (MemoryBackend("mem0", 64), MemoryBackend("mem1", 64)),
          "numa_nodes": (NumaNode(0, 0, 0, "mem0"), NumaNode(1, 1, 1, "mem0"))}, "exactly one guest NUMA node"),
    ],
    ids=["no-cpus", "tiny-memory", "microvm-without-kernel", "backend-sizes-disagree", "two-backends-no-nodes",
         "nodes-without-backends", "vcpu-twice", "backend-twice"],
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


def _direct_boot(**fields: object) -> VMConfig:
    return VMConfig(
        vm_id="ctr1",
        root_disk=DiskConfig("/s/overlay.qcow2", "qcow2"),
        kernel=KernelBoot("/img/vmlinuz", "/img/initrd.img", ("console=ttyS0",)),
        **fields,  # type: ignore[arg-type]
    )


def _q35_direct_argv(machine: str, cpus: int, memory_mib: int, memory: list[str]) -> list[str]:
    """The whole argv of a q35 guest booting its kernel directly, around its memory fragment."""
    return COMMON_HEAD + [
        "-machine", machine, "-accel", "tcg",
        "-smp", str(cpus), "-m", f"{memory_mib}M",
        *memory,
        "-action", "panic=exit-failure",
        "-kernel", "/img/vmlinuz", "-initrd", "/img/initrd.img", "-append", "console=ttyS0",
        *MONITORS_AND_CONSOLE,
        *_disk_args("root", "/s/overlay.qcow2", "qcow2", False,
                    {"driver": "virtio-blk-pci", "id": "blk-root", "drive": "root"}),
        *Q35_DEVICE_TAIL,
    ]


def test_two_node_guest_topology_argv() -> None:
    config = _direct_boot(cpus=2, memory_mib=512, host_nodes=(0,), guest_numa_nodes=2)
    assert VM.render(config, FDS, "/s/console.raw").argv() == _q35_direct_argv("q35", 2, 512, [
        "-object", '{"qom-type":"memory-backend-ram","id":"mem0","size":268435456,"host-nodes":[0],"policy":"bind"}',
        "-object", '{"qom-type":"memory-backend-ram","id":"mem1","size":268435456,"host-nodes":[0],"policy":"bind"}',
        "-numa", "node,nodeid=0,cpus=0,memdev=mem0",
        "-numa", "node,nodeid=1,cpus=1,memdev=mem1",
    ])


def test_hugepage_backed_guest_argv() -> None:
    config = _direct_boot(cpus=2, memory_mib=256, host_nodes=(0,), hugepages=HugepageConfig(mount="/dev/hugepages"))
    assert VM.render(config, FDS, "/s/console.raw").argv() == _q35_direct_argv("q35,memory-backend=mem0", 2, 256, [
        "-object", '{"qom-type":"memory-backend-file","id":"mem0","size":268435456,"mem-path":"/dev/hugepages",'
                   '"share":false,"prealloc":true,"host-nodes":[0],"policy":"bind"}',
    ])


@pytest.mark.parametrize(
    ("fields", "backend"),
    [
        ({"shared_memory": True},
         '{"qom-type":"memory-backend-memfd","id":"mem0","size":134217728,"share":true}'),
        ({"shared_memory": True, "hugepages": HugepageConfig(mount="/hp")},
         '{"qom-type":"memory-backend-file","id":"mem0","size":134217728,"mem-path":"/hp",'
         '"share":true,"prealloc":true}'),
        ({"host_nodes": (0, 1)},
         '{"qom-type":"memory-backend-ram","id":"mem0","size":134217728,"host-nodes":[0,1],"policy":"bind"}'),
    ],
    ids=["memfd-shared", "hugepages-shared", "two-host-nodes"],
)
def test_memory_backend_kinds(fields: dict[str, object], backend: str) -> None:
    argv = VM.render(_direct_boot(**fields), FDS, "/s/console.raw").argv()
    assert argv[argv.index("-object") + 1] == backend
    assert argv[argv.index("-machine") + 1] == "q35,memory-backend=mem0"


def test_balloon_and_memory_backend_qmp_arguments_match_the_command_line() -> None:
    balloon = VirtioBalloon("balloon0", Transport.PCI)
    assert json.loads(balloon.args()[1]) == balloon.qmp_args()
    backend = MemoryBackend("mem9", 64, host_nodes=(0,))
    assert json.loads(backend.args()[1]) == backend.qmp_args()


def test_config_json_round_trip_keeps_the_memory_layout() -> None:
    config = _direct_boot(
        cpus=2, memory_mib=512, host_nodes=(0, 1), guest_numa_nodes=2,
        hugepages=HugepageConfig(page_size_kib=2048, mount="/hp", prealloc=False), shared_memory=True,
    )
    assert VMConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    old_document = _direct_boot().to_json()
    for name in ("host_nodes", "guest_numa_nodes", "hugepages", "shared_memory"):
        del old_document[name]
    assert VMConfig.from_json(old_document) == _direct_boot()  # a VM started before these fields existed


def test_nics_follow_the_disks_in_order_with_their_tap_fds() -> None:
    from qmprt.vm.config import NICConfig

    config = VMConfig(
        vm_id="ctr1",
        root_disk=DiskConfig("/s/overlay.qcow2", "qcow2"),
        nics=(NICConfig("0a:58:0a:63:00:05", mtu=1450), NICConfig("0a:58:0a:64:00:07")),
    )
    argv = VM.render(config, FDS, "/s/console.raw", nic_fds=(9, 11)).argv()
    disk = _disk_args("root", "/s/overlay.qcow2", "qcow2", False,
                      {"driver": "virtio-blk-pci", "id": "blk-root", "drive": "root", "bootindex": 0})
    start = argv.index(disk[-1]) + 1
    assert argv[start:start + 8] == [
        "-netdev", "tap,id=net0,fd=9,vhost=off",
        "-device", '{"driver":"virtio-net-pci","id":"nic0","netdev":"net0","mac":"0a:58:0a:63:00:05","host_mtu":1450}',
        "-netdev", "tap,id=net1,fd=11,vhost=off",
        "-device", '{"driver":"virtio-net-pci","id":"nic1","netdev":"net1","mac":"0a:58:0a:64:00:07"}',
    ]
    assert argv[start + 8:] == Q35_DEVICE_TAIL
    assert VMConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_microvm_nic_is_a_virtio_mmio_device() -> None:
    from qmprt.vm.config import NICConfig

    config = VMConfig(vm_id="ctr1", machine="microvm", root_disk=DiskConfig("/s/o.qcow2", "qcow2"),
                      kernel=KernelBoot("/k", None, ()), nics=(NICConfig("0a:58:0a:63:00:05"),))
    argv = VM.render(config, FDS, "/s/console.raw", nic_fds=(7,)).argv()
    assert '{"driver":"virtio-net-device","id":"nic0","netdev":"net0","mac":"0a:58:0a:63:00:05"}' in argv


@pytest.mark.parametrize(
    ("mac", "mtu", "complaint"),
    [("0A:58:0a:63:00:05", None, "form"), ("01:00:5e:00:00:01", None, "multicast"), ("0a:58:0a:63:00:05", 40, "MTU")],
    ids=["upper-case", "multicast", "tiny-mtu"],
)
def test_bad_nics_are_refused(mac: str, mtu: int | None, complaint: str) -> None:
    from qmprt.errors import InvalidArgument
    from qmprt.vm.config import NICConfig

    with pytest.raises(InvalidArgument, match=complaint):
        NICConfig(mac, mtu)


def test_a_nic_without_its_tap_fd_is_refused() -> None:
    from qmprt.errors import InvalidArgument
    from qmprt.vm.config import NICConfig

    config = VMConfig(vm_id="ctr1", root_disk=DiskConfig("/s/o.qcow2", "qcow2"), nics=(NICConfig("0a:58:0a:63:00:05"),))
    with pytest.raises(InvalidArgument, match="1 tap fds wanted for 1 NICs, 0 given"):
        VM.render(config, FDS, "/s/console.raw")


def test_a_vm_that_drops_root_chroots_and_keeps_setuid_allowed() -> None:
    config = VMConfig(vm_id="ctr1", root_disk=DiskConfig("/s/overlay.qcow2", "qcow2"), run_as=(1900000001, 1900000001))
    argv = VM.render(config, FDS, "/s/console.raw", jail="/s").argv()
    assert argv[:10] == [
        "qemu-system-x86_64",
        "-name", "guest=ctr1,debug-threads=on",
        "-nodefaults", "-no-user-config", "-display", "none",
        # QEMU installs its filter before it changes user: setuid stays allowed, exec does not.
        "-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
        "-msg",
    ]
    at = argv.index("-runas")
    assert argv[at:at + 4] == ["-runas", "1900000001:1900000001", "-chroot", "/s"]
    # Without run_as there is neither, whatever jail says (a chroot does not hold root).
    plain = VM.render(dataclasses.replace(config, run_as=None), FDS, "/s/console.raw", jail="/s").argv()
    assert "-runas" not in plain and "-chroot" not in plain
    assert VMConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"run_as": (0, 0)}, "must not be root"),
        ({"run_as": (5, 0)}, "must not be root"),
        ({"run_as": (5, 5), "chroot": "relative"}, "absolute"),
        ({"chroot": "/s"}, "user to drop to"),
    ],
    ids=["root", "root-group", "relative-chroot", "chroot-as-root"],
)
def test_spec_refuses_a_drop_that_keeps_root(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VMSpec(name="x", machine="q35", accel="tcg", cpus=1, memory_mib=128, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("role", "share", "tail"), [("save", True, []), ("restore", False, ["-incoming", "defer"])])
def test_a_template_and_its_clone_map_one_ram_file(role: str, share: bool, tail: list[str]) -> None:
    config = _direct_boot(snapshot=Snapshot(role, "/t/ram", "/t/state"))
    vmgenid = ["-device", '{"driver":"vmgenid","id":"vmgenid0","guid":"auto"}']
    assert VM.render(config, FDS, "/s/console.raw").argv() == _q35_direct_argv("q35,memory-backend=mem0", 1, 128, [
        "-object", '{"qom-type":"memory-backend-file","id":"mem0","size":134217728,"mem-path":"/t/ram",'
                   f'"share":{"true" if share else "false"}}}',
    ]) + vmgenid + tail
    assert VMConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


@pytest.mark.parametrize(
    "fields",
    [{"hugepages": HugepageConfig(mount="/hp")}, {"shared_memory": True}, {"guest_numa_nodes": 2, "cpus": 2},
     {"host_nodes": (0,)}],
    ids=["hugepages", "shared-memory", "guest-numa", "host-nodes"],
)
def test_a_template_is_one_plain_ram_file(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="cannot be templated"):
        _direct_boot(snapshot=Snapshot("save", "/t/ram", "/t/state"), **fields)
    with pytest.raises(InvalidArgument, match="saved or restored"):
        Snapshot("copy", "/t/ram", "/t/state")
