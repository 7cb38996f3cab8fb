"""A ``qmprt.io/boot: template`` container: its template's key, the clone's files and VM, its identity.

At CreateContainer (``plan``): the key of the template the container's VM would be; when that template
is ready the container becomes a clone (its files linked, its overlay on the template's frozen disk,
its identity written), else it boots cold and the template is built in the background for the next.
At StartContainer: the clone's VMConfig is the container's own with the template's seed and RAM and
``-incoming``; once QEMU runs the guest again, ``give_identity`` hands it the container's seed, clock,
entropy and MACs through the exec helper.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from qmprt.cloudinit.template import identity_script
from qmprt.config import Config
from qmprt.image.overlay import create_overlay_async
from qmprt.pod import guest, planning
from qmprt.pod.annotations import QmprtAnnotations
from qmprt.pod.network import PodNetwork
from qmprt.pod.specs import ContainerSpec
from qmprt.pod.records import ContainerRecord
from qmprt.pod import templates
from qmprt.pod.templates import TemplateKey, Templates, check_templatable
from qmprt.vm import snapshot
from qmprt.vm.config import DiskConfig, Snapshot, VMConfig
from qmprt.vm.machine import VM

if TYPE_CHECKING:
    from qmprt.image.records import ImageRecord
    from qmprt.pod.storage import StoragePlan

IDENTITY_TIMEOUT_S = 60.0


def template_key(image: ImageRecord, choices: planning.ContainerChoices, network: PodNetwork | None, config: Config,
                 accel: str) -> TemplateKey:
    """Its choices boot the image's kernel when it has one (``planning.choose``), as the key says."""
    nics = len(network.nics()) if network is not None else 0
    return templates.template_key(image, choices.machine, choices.vcpus, choices.size.guest_memory_mib, nics, config, accel)


def check_request(spec: ContainerSpec, requested: QmprtAnnotations, choices: planning.ContainerChoices) -> None:
    """Before anything is made: what the spec and annotations already say a template cannot hold."""
    check_templatable(
        shares=any(os.path.isdir(mount.host_path) for mount in spec.mounts),
        volumes=bool(spec.devices or requested.data_volume_sizes or requested.rbd_volumes or requested.iscsi_volumes),
        hugepages=choices.size.hugepage_page_kib is not None, numa_nodes=requested.numa_nodes,
        host_nodes=bool(choices.host_nodes), seed_format=requested.seed_format,
    )


def check(choices: planning.ContainerChoices, record: ContainerRecord, storage: StoragePlan) -> None:
    """Once the storage is planned: the same, from what was decided (the authority)."""
    check_templatable(
        shares=bool(storage.shares), volumes=bool(storage.volumes), hugepages=record.hugepage_page_kib is not None,
        numa_nodes=record.guest_numa_nodes, host_nodes=bool(record.host_nodes), seed_format=record.seed_format,
    )


async def make_clone(templates: Templates, key: TemplateKey, directory: Path, image: ImageRecord,
                     choices: planning.ContainerChoices) -> bool:
    """Link the ready template of ``key`` into ``directory`` and put the overlay on its disk; False
    (nothing made) when there is no such template: the container boots cold."""
    if templates.ready(key) is None:
        return False
    links = templates.link_into(key, directory)
    await create_overlay_async(
        str(links["disk.qcow2"]), "qcow2", directory / guest.OVERLAY_FILE, choices.root_disk_bytes,
        base_virtual_size_bytes=image.virtual_size,
    )
    return True


def clone_config(config: VMConfig, directory: Path) -> VMConfig:
    """The container's own VM, with its template's seed disk and RAM and the device state to restore."""
    return dataclasses.replace(
        config,
        seed=DiskConfig(str(directory / "template-seed.iso"), "raw", read_only=True, serial="cidata"),
        snapshot=Snapshot("restore", str(directory / "template-ram"), str(directory / "template-state")),
    )


async def give_identity(vm: VM, directory: Path) -> None:
    script = identity_script(guest.read_identity(directory), macs=[nic.mac for nic in vm.config.nics])
    await snapshot.take_identity(vm.guest_exec, script, IDENTITY_TIMEOUT_S)
