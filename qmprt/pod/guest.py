"""From a container and its sandbox to what the guest sees: the NoCloud seed and the VMConfig."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from qmprt.cloudinit import COMMAND_EXIT_MARKER, SeedFormat, SeedSpec, seed_files, write_seed_iso
from qmprt.config import Config, VMDefaults
from qmprt.errors import InvalidArgument, ResourceExhausted
from qmprt.pod.specs import ContainerSpec, SandboxSpec
from qmprt.pod.annotations import QmprtAnnotations
from qmprt.pod.network import PodNetwork, guest_dns
from qmprt.pod.records import ContainerRecord
from qmprt.pod.storage import StoragePlan
from qmprt.vm.config import DiskConfig, VMConfig
from qmprt.vm.accel import host_tsc_khz
from qmprt.vm.devices import KernelBoot, RawArgs
from qmprt.vm.numa import HugepageConfig
from qmprt.virtio import Transport
from qmprt.volumes import BlockVolumes, VirtiofsShares
from qmprt.vm.spec import Accelerator, Device, MachineType

log = logging.getLogger(__name__)
OVERLAY_FILE = "overlay.qcow2"
SEED_FILE = "seed.iso"


def seed_spec(
    container_id: str, container: ContainerSpec, sandbox: SandboxSpec, requested: QmprtAnnotations, plan: StoragePlan,
    network: PodNetwork | None = None, command_exit: str = "keep", exec_helper: bytes | None = None,
) -> SeedSpec:
    hostname = sandbox.guest_hostname
    try:
        return SeedSpec(
            instance_id=container_id,
            hostname=hostname,
            env=dict(container.envs),
            command=container.command + container.args,
            dns=guest_dns(sandbox, network),
            interfaces=network.guest_interfaces() if network is not None else (),
            files=plan.files,
            mounts=plan.seed_mounts,
            ssh_authorized_keys=requested.ssh_authorized_keys,
            user_data=requested.user_data.encode() if requested.user_data is not None else None,
            user_data_mode=requested.user_data_mode,  # type: ignore[arg-type]
            sysctls=sandbox.sysctls,
            working_dir=container.working_dir,
            power_off_after_command=command_exit == "poweroff",
            command_stdin=("tty" if container.tty else "stream") if container.stdin else "",
            exec_helper=exec_helper,
        )
    except ValueError as err:
        raise InvalidArgument(f"container {container.metadata.name!r}: {err}") from err


def write_seed(
    directory: Path, container_id: str, container: ContainerSpec, sandbox: SandboxSpec,
    requested: QmprtAnnotations, plan: StoragePlan, network: PodNetwork | None = None, command_exit: str = "keep",
    exec_helper: Path | None = None,
) -> Path:
    path = directory / SEED_FILE
    try:
        write_seed_iso(
            seed_spec(container_id, container, sandbox, requested, plan, network, command_exit,
                      read_exec_helper(exec_helper)),
            path, SeedFormat(requested.seed_format),
        )
    except ValueError as err:
        raise InvalidArgument(f"container {container.metadata.name!r}: {err}") from err
    return path


IDENTITY_DIR = "identity"


def write_identity(
    directory: Path, container_id: str, container: ContainerSpec, sandbox: SandboxSpec,
    requested: QmprtAnnotations, plan: StoragePlan, network: PodNetwork | None = None, command_exit: str = "keep",
) -> None:
    """A clone's identity: the NoCloud files its seed would hold (without the exec helper, which its
    template runs already), kept in ``identity/`` until StartContainer hands them to the guest."""
    spec = seed_spec(container_id, container, sandbox, requested, plan, network, command_exit)
    try:
        files = seed_files(spec)
    except ValueError as err:
        raise InvalidArgument(f"container {container.metadata.name!r}: {err}") from err
    target = directory / IDENTITY_DIR
    target.mkdir(mode=0o700)
    for name, data in files.items():
        (target / name).write_bytes(data)


def read_identity(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((directory / IDENTITY_DIR).iterdir())}


def read_exec_helper(path: Path | None) -> bytes | None:
    """The exec helper's bytes for a seed, or None (logged) when there is none to deliver."""
    if path is None:
        log.info("no exec helper binary found ([vm] exec_helper): seeds go without it")
        return None
    try:
        return path.read_bytes()
    except OSError as err:
        log.warning("exec helper %s not readable (%s): seeds go without it; exec needs a guest that has one", path, err)
        return None


def allocate_vm_uid(defaults: VMDefaults, used: Iterable[int | None]) -> int | None:
    """The lowest uid of ``[uid_base, uid_base + uid_count)`` no other VM has (None: QEMU stays root)."""
    if not defaults.unprivileged:
        return None
    taken = {uid for uid in used if uid is not None}
    for uid in range(defaults.uid_base, defaults.uid_base + defaults.uid_count):
        if uid not in taken:
            return uid
    raise ResourceExhausted(
        f"all {defaults.uid_count} VM user ids (vm.uid_base {defaults.uid_base}) are in use: "
        "remove containers or raise vm.uid_count"
    )


def kernel_boot(record: ContainerRecord, accel: Accelerator) -> KernelBoot | None:
    if record.kernel is None:
        return None
    append = tuple(record.cmdline.split())
    if record.machine == "microvm" and accel == "tcg":
        # microvm has no HPET or PM timer to calibrate the TSC against; without this ~5-10 % of
        # TCG boots hang (GUESTS.md).
        khz = host_tsc_khz()
        if khz:
            append += (f"tsc_early_khz={khz}",)
    return KernelBoot(record.kernel, record.initrd, append)


def _is_job(record: ContainerRecord) -> bool:
    """A command whose end powers the guest off and gives the container its exit code."""
    return record.command_exit == "poweroff" and bool(record.spec.command or record.spec.args)


def machine_type(record: ContainerRecord) -> MachineType:
    return "microvm" if record.machine == "microvm" else "q35"


def hugepages(record: ContainerRecord) -> HugepageConfig | None:
    return HugepageConfig(page_size_kib=record.hugepage_page_kib) if record.hugepage_page_kib else None


def extra_devices(record: ContainerRecord) -> tuple[Device, ...]:
    """The container's disks and shares, as devices of its VM (an old record's disks as it rendered them)."""
    transport = Transport.for_machine(record.machine)
    devices: list[Device] = [RawArgs(record.volume_args)] if record.volume_args else []
    if record.volumes:
        devices.append(BlockVolumes(record.volumes, transport))
    if record.shares:
        devices.append(VirtiofsShares(record.shares, transport))
    return tuple(devices)


def vm_config(
    container_id: str, directory: Path, record: ContainerRecord, config: Config, accel: Accelerator,
    network: PodNetwork | None = None,
) -> VMConfig:
    """The VM of a container: its overlay as the root disk, the seed beside it, a NIC per pod interface."""
    return VMConfig(
        vm_id=container_id,
        root_disk=DiskConfig(str(directory / OVERLAY_FILE), "qcow2"),
        seed=DiskConfig(str(directory / SEED_FILE), "raw", read_only=True, serial=SeedFormat(record.seed_format).label),
        machine=machine_type(record),
        kernel=kernel_boot(record, accel),
        accel=accel,
        cpus=record.vcpus,
        memory_mib=record.guest_memory_mib,
        host_nodes=record.host_nodes,
        guest_numa_nodes=record.guest_numa_nodes,
        hugepages=hugepages(record),
        extra_devices=extra_devices(record),
        shared_memory=bool(record.shares),
        tcg_tb_size_mib=config.vm.tcg_tb_size_mib or None,
        binary=config.vm.qemu_binary,
        nics=network.nics() if network is not None else (),
        exit_status_marker=COMMAND_EXIT_MARKER if _is_job(record) else "",
        run_as=(record.vm_uid, record.vm_uid) if record.vm_uid is not None else None,
    )
