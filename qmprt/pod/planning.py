"""What CreateContainer decides, without doing any of it: from the container spec, its sandbox, the
image and the node's configuration to the ``ContainerRecord`` that ``container.json`` keeps.

Planning runs in two steps around the one thing that needs files: ``choose`` (everything that can
be refused before a directory exists) and ``container_record`` (once the storage is planned, which
writes ephemeral disks and secrets). The memory plan is computed once, from the record
(``memory_plan``), for the host check.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qmprt import cgroups
from qmprt.config import Config
from qmprt.errors import InvalidArgument
from qmprt.pod import guest
from qmprt.pod.annotations import QmprtAnnotations
from qmprt.pod.specs import ContainerSpec, Resources, SandboxSpec
from qmprt.pod.records import ContainerRecord
from qmprt.pod.sizing import VMSize, size_vm
from qmprt.pod.storage import StoragePlan
from qmprt.vm.numa import MemoryPlan, plan_memory
from qmprt.vm.pinning import parse_cpuset, parse_id_list

if TYPE_CHECKING:
    from qmprt.image.boot import BootFiles
    from qmprt.image.records import ImageRecord


@dataclass(frozen=True)
class ContainerChoices:
    """What is decided for a container before any of its files exist."""

    size: VMSize
    vcpus: int
    host_nodes: tuple[int, ...]
    machine: str  # "q35" | "microvm"
    boot_files: BootFiles | None  # direct kernel boot, else None (boot from the disk)
    root_disk_bytes: int | None  # the overlay's virtual size; None: the image's
    command_exit: str


def check_container_spec(spec: ContainerSpec, sandbox: SandboxSpec) -> None:
    """What a well-formed container spec (``qmprt.cri.convert`` checked its form) needs of its sandbox:
    a log directory to hold its log."""
    if spec.log_path and not sandbox.log_directory:
        raise InvalidArgument("log_path is set but the sandbox has no log_directory")


def overhead_mib(sandbox: SandboxSpec, config: Config) -> int:
    """The VM's host memory besides guest RAM: the pod's RuntimeClass overhead when it states
    one (kubelet then accounts it to the pod), else the configured ``vm.memory_overhead_mib``."""
    overhead = sandbox.overhead
    if overhead is not None and overhead.memory_limit_in_bytes > 0:
        return overhead.memory_limit_in_bytes >> 20
    return config.vm.memory_overhead_mib


def parent_path(cgroup_parent: str, config: Config) -> str:
    try:
        return cgroups.parent_to_path(cgroup_parent, config.cgroups.driver)  # type: ignore[arg-type]
    except ValueError as err:
        raise InvalidArgument(f"cgroup_parent: {err}") from err


def sandbox_cgroup_path(sandbox_id: str, sandbox: SandboxSpec, config: Config) -> str:
    """kubelet's pod cgroup when it gives one, else one of qmprt's own under ``cgroups.root``."""
    if sandbox.cgroup_parent:
        return parent_path(sandbox.cgroup_parent, config)
    return f"{config.cgroups.root}/{sandbox_id[:16]}"


def choose(
    spec: ContainerSpec, sandbox: SandboxSpec, image: ImageRecord, requested: QmprtAnnotations, config: Config,
    max_image_bytes: int,
) -> ContainerChoices:
    """Size, boot and layout of the container's VM; refuses what cannot work before anything is made."""
    boot_files = image.boot if requested.boot != "disk" else None
    if requested.boot in ("direct", "microvm") and boot_files is None:
        raise InvalidArgument(
            f"annotation qmprt.io/boot={requested.boot}: image {spec.image!r} has no kernel attached; "
            "import it with `qmprt ctl image import … --kernel K --initrd I --cmdline C`, or boot from disk"
        )
    requested.check_data_volumes(max_image_bytes)
    root_disk_bytes = None
    if requested.root_volume_size_bytes is not None:
        root_disk_bytes = requested.check_root_volume(image.virtual_size, max_image_bytes)
    size = size_vm(spec.resources, config.vm.cpus, config.vm.memory_mib, overhead_mib(sandbox, config))
    vcpus = requested.vcpu_count(size.vcpus)
    resources = spec.resources or Resources()
    if resources.cpuset_cpus:
        parse_cpuset(resources.cpuset_cpus)
    return ContainerChoices(
        size=size,
        vcpus=vcpus,
        host_nodes=parse_id_list(resources.cpuset_mems, "NUMA node") if resources.cpuset_mems else (),
        machine="microvm" if requested.boot == "microvm" else "q35",
        boot_files=boot_files,
        root_disk_bytes=root_disk_bytes,
        command_exit=requested.command_exit or config.vm.command_exit,
    )


def container_record(
    container_id: str, spec: ContainerSpec, sandbox_id: str, sandbox: SandboxSpec, image: ImageRecord,
    requested: QmprtAnnotations, choices: ContainerChoices, storage: StoragePlan, config: Config,
    used_uids: Iterable[int | None],
) -> ContainerRecord:
    """What ``container.json`` keeps: the spec and every choice made for it."""
    boot_files = choices.boot_files
    return ContainerRecord(
        spec=spec,
        sandbox_id=sandbox_id,
        image_digest=image.digest,
        image_path=image.path,
        image_format=image.format,
        log_path=os.path.join(sandbox.log_directory, spec.log_path) if spec.log_path else "",
        cgroup_path=f"{sandbox_cgroup_path(sandbox_id, sandbox, config)}/qmprt-{container_id[:16]}",
        vcpus=choices.vcpus,
        guest_memory_mib=choices.size.guest_memory_mib,
        cgroup_memory_bytes=choices.size.cgroup_memory_bytes,
        host_nodes=choices.host_nodes,
        guest_numa_nodes=requested.guest_numa_nodes(choices.vcpus),
        hugepage_page_kib=choices.size.hugepage_page_kib,
        seed_format=requested.seed_format,
        machine=choices.machine,
        kernel=boot_files.kernel if boot_files else None,
        initrd=boot_files.initrd if boot_files else None,
        cmdline=boot_files.cmdline if boot_files else "",
        volumes=storage.volumes,
        shares=storage.shares,
        command_exit=choices.command_exit,
        vm_uid=guest.allocate_vm_uid(config.vm, used_uids),
    )


def memory_plan(record: ContainerRecord) -> MemoryPlan:
    """The guest RAM layout the record's VM gets (the same ``guest.vm_config`` gives QEMU)."""
    return plan_memory(
        memory_mib=record.guest_memory_mib, cpus=record.vcpus, machine=guest.machine_type(record),
        guest_numa_nodes=record.guest_numa_nodes, host_nodes=record.host_nodes,
        hugepages=guest.hugepages(record), shared=bool(record.shares),
    )
