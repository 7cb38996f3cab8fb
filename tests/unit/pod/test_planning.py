"""CreateContainer's planning: from spec, sandbox, image and config to the ContainerRecord, no files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qmprt.config import Config
from qmprt.errors import InvalidArgument
from qmprt.image.boot import BootFiles
from qmprt.image.records import ImageRecord
from qmprt.pod import guest, planning
from qmprt.pod.annotations import parse_annotations
from qmprt.pod.specs import Resources
from qmprt.pod.storage import StoragePlan
from qmprt.virtio import Transport
from qmprt.vm.machine import VM
from qmprt.volumes import Attachment, BlockVolumes, HostBlockVolume, VirtiofsShare, VirtiofsShares

from .fakes import container_spec, sandbox_spec

IMAGE = ImageRecord(
    digest="sha256:" + "a" * 64, path="/images/a", format="qcow2", size_bytes=1 << 20, virtual_size=1 << 30,
    names=("tiny",), created_at_ns=0,
)
MAX = 64 << 30


def test_a_container_log_needs_the_pods_log_directory() -> None:
    planning.check_container_spec(container_spec(log_path="app/0.log"), sandbox_spec(log_directory="/var/log/pods/web"))
    planning.check_container_spec(container_spec(), sandbox_spec())
    with pytest.raises(InvalidArgument, match="no log_directory"):
        planning.check_container_spec(container_spec(log_path="a.log"), sandbox_spec())


def test_overhead_is_the_pods_when_it_states_one() -> None:
    config = Config()
    assert planning.overhead_mib(sandbox_spec(), config) == config.vm.memory_overhead_mib
    pod = sandbox_spec(overhead=Resources(memory_limit_in_bytes=96 << 20))
    assert planning.overhead_mib(pod, config) == 96


def test_sandbox_cgroup_is_kubelets_parent_or_qmprts_own() -> None:
    config = Config()
    assert planning.sandbox_cgroup_path("ab" * 32, sandbox_spec(), config) == f"{config.cgroups.root}/{'ab' * 8}"
    assert planning.sandbox_cgroup_path("ab" * 32, sandbox_spec(cgroup_parent="/kubepods/pod1"), config) == "kubepods/pod1"
    with pytest.raises(InvalidArgument, match="cgroup_parent: invalid cgroup path"):
        planning.parent_path("x/../y", config)


def test_choices_follow_resources_and_annotations() -> None:
    config = Config()
    resources = Resources(cpu_period=100_000, cpu_quota=250_000, memory_limit_in_bytes=512 << 20, cpuset_mems="0")
    spec = container_spec(resources=resources, annotations={"qmprt.io/vcpus": "2"})
    requested = parse_annotations(spec.annotations, {})
    choices = planning.choose(spec, sandbox_spec(), IMAGE, requested, config, MAX)
    assert choices.size.vcpus == 3 and choices.vcpus == 2
    assert choices.size.guest_memory_mib == 512 - config.vm.memory_overhead_mib
    assert choices.host_nodes == (0,)
    assert (choices.machine, choices.boot_files, choices.root_disk_bytes) == ("q35", None, None)
    assert choices.command_exit == config.vm.command_exit


def test_direct_boot_needs_a_kernel_attached_to_the_image() -> None:
    spec = container_spec(annotations={"qmprt.io/boot": "microvm"})
    requested = parse_annotations(spec.annotations, {})
    with pytest.raises(InvalidArgument, match="has no kernel attached"):
        planning.choose(spec, sandbox_spec(), IMAGE, requested, Config(), MAX)
    image = dataclasses.replace(IMAGE, boot=BootFiles("/boot/vmlinuz", None, "console=ttyS0"))
    choices = planning.choose(spec, sandbox_spec(), image, requested, Config(), MAX)
    assert choices.machine == "microvm" and choices.boot_files == image.boot


def test_a_bad_cpuset_is_refused_before_anything_exists() -> None:
    spec = container_spec(resources=Resources(cpuset_cpus="0-x"))
    with pytest.raises(InvalidArgument):
        planning.choose(spec, sandbox_spec(), IMAGE, parse_annotations({}, {}), Config(), MAX)


def test_the_record_keeps_every_choice_and_its_memory_plan_is_the_vms(tmp_path: Path) -> None:
    config = Config()
    pod = sandbox_spec(log_directory="/var/log/pods/web")
    spec = container_spec(log_path="app/0.log", resources=Resources(memory_limit_in_bytes=512 << 20))
    requested = parse_annotations({}, {})
    choices = planning.choose(spec, pod, IMAGE, requested, config, MAX)
    disk = HostBlockVolume(Attachment("dev0", "data"), "/dev/null", "file")
    share = VirtiofsShare("fs0", "qmprt-fs0", "/srv", "/run/fs0.sock")
    storage = StoragePlan(files=(), seed_mounts=(), volumes=(disk,), shares=(share,))
    record = planning.container_record("cd" * 32, spec, "ab" * 32, pod, IMAGE, requested, choices, storage, config, [])
    assert record.log_path == "/var/log/pods/web/app/0.log"
    assert record.cgroup_path == f"{config.cgroups.root}/{'ab' * 8}/qmprt-{'cd' * 8}"
    assert (record.image_digest, record.image_path, record.image_format) == (IMAGE.digest, IMAGE.path, "qcow2")
    assert (record.vcpus, record.guest_memory_mib, record.cgroup_memory_bytes) == (
        choices.vcpus, choices.size.guest_memory_mib, 512 << 20,
    )
    assert record.volumes == (disk,) and record.shares == (share,) and record.volume_args == ()
    assert record.vm_uid == config.vm.uid_base
    vm = guest.vm_config("cd" * 32, tmp_path, record, config, "tcg")
    assert planning.memory_plan(record) == vm.memory_plan()
    # The disk and the share are devices of the VM, rendered with the others.
    assert vm.extra_devices == (BlockVolumes((disk,), Transport.PCI), VirtiofsShares((share,), Transport.PCI))
    argv = VM.render(vm, {"qmp": 3, "qmp-shell": 4, "qga": 5, "console": 6, "exec": 7}, "/c.raw").argv()
    assert '{"driver":"virtio-blk-pci","id":"vol-dev0-dev","drive":"vol-dev0","serial":"data"}' in argv
    assert share.args("pci")[1] in argv and vm.shared_memory
