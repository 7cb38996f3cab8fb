"""From a container and its sandbox to what the guest sees: the NoCloud seed and the VMConfig."""

from __future__ import annotations

from pathlib import Path

from qmprt.cloudinit import DNSConfig, SeedSpec, write_nocloud_iso
from qmprt.config import Config
from qmprt.errors import InvalidArgument
from qmprt.pod.model import ContainerSpec, SandboxSpec
from qmprt.pod.records import ContainerRecord
from qmprt.vm.machine import DiskConfig, VMConfig
from qmprt.vm.numa import HugepageConfig
from qmprt.vm.spec import Accelerator

OVERLAY_FILE = "overlay.qcow2"
SEED_FILE = "seed.iso"


def seed_spec(container_id: str, container: ContainerSpec, sandbox: SandboxSpec) -> SeedSpec:
    hostname = sandbox.hostname or sandbox.metadata.name
    dns = None
    if sandbox.dns.servers or sandbox.dns.searches or sandbox.dns.options:
        dns = DNSConfig(servers=sandbox.dns.servers, searches=sandbox.dns.searches, options=sandbox.dns.options)
    try:
        return SeedSpec(
            instance_id=container_id,
            hostname=hostname,
            env=dict(container.envs),
            command=container.command + container.args,
            dns=dns,
        )
    except ValueError as err:
        raise InvalidArgument(f"container {container.metadata.name!r}: {err}") from err


def write_seed(directory: Path, container_id: str, container: ContainerSpec, sandbox: SandboxSpec) -> Path:
    path = directory / SEED_FILE
    try:
        write_nocloud_iso(seed_spec(container_id, container, sandbox), path)
    except ValueError as err:
        raise InvalidArgument(f"container {container.metadata.name!r}: {err}") from err
    return path


def vm_config(container_id: str, directory: Path, record: ContainerRecord, config: Config, accel: Accelerator) -> VMConfig:
    """The VM of a container: its overlay as the boot disk, the seed beside it."""
    return VMConfig(
        vm_id=container_id,
        root_disk=DiskConfig(str(directory / OVERLAY_FILE), "qcow2"),
        seed=DiskConfig(str(directory / SEED_FILE), "raw", read_only=True, serial="cidata"),
        machine="q35",
        accel=accel,
        cpus=record.vcpus,
        memory_mib=record.guest_memory_mib,
        host_nodes=record.host_nodes,
        guest_numa_nodes=record.guest_numa_nodes,
        hugepages=HugepageConfig(page_size_kib=record.hugepage_page_kib) if record.hugepage_page_kib else None,
        tcg_tb_size_mib=config.vm.tcg_tb_size_mib or None,
        binary=config.vm.qemu_binary,
    )
