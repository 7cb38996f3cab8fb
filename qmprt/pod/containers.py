"""The life of containers: create (plan, overlay, storage, seed, records), start (its VM), stop, remove.

Each mutating call builds inside an ``AsyncExitStack`` and keeps the undo steps only on success, so a
failed call leaves nothing behind (no QEMU, cgroup, file or reserved name). Each change is announced
(``qmprt.pod.events``) as soon as it is recorded: CREATED, STARTED, STOPPED (through
``ContainerVMs.record_exit``, or a start that failed) and DELETED.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qmprt import cgroups, state, telemetry
from qmprt.config import Config
from qmprt.errors import FailedPrecondition, NotFound, best_effort
from qmprt.image.overlay import create_overlay_async
from qmprt.pod import cloning, guest, planning
from qmprt.pod.annotations import QmprtAnnotations, parse_annotations
from qmprt.pod.events import EventType
from qmprt.pod.specs import ContainerSpec, metadata_bytes
from qmprt.pod.network import PodNetworks
from qmprt.pod.live import Container, Sandbox
from qmprt.pod.registry import Registry
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.pod.templates import Templates
from qmprt.pod.storage import ShareDaemons, check_devices, check_mounts, plan_storage
from qmprt.pod.records import ContainerStatus
from qmprt.pod.vms import ContainerVMs
from qmprt.virtio import Transport
from qmprt.vm.console import CRILogWriter
from qmprt.vm.machine import VM
from qmprt.vm.numa import check_host
from qmprt.vm.spec import Accelerator

if TYPE_CHECKING:
    from qmprt.image import ImageStore
    from qmprt.image.records import ImageRecord

log = logging.getLogger(__name__)

FORCED_STOP_GRACE = 0.0


@dataclass
class Containers:
    """Creates, starts, stops and removes the containers of ``registry``."""

    config: Config
    registry: Registry
    vms: ContainerVMs
    images: ImageStore
    networks: PodNetworks
    accel: Accelerator
    templates: Templates

    # -- create -----------------------------------------------------------------------------------------
    async def create(self, sandbox_id: str, spec: ContainerSpec) -> str:
        sandbox = self.registry.sandbox(sandbox_id)
        planning.check_container_spec(spec, sandbox.spec)
        requested = parse_annotations(spec.annotations, sandbox.spec.annotations)
        self.registry.check_metadata_budget(metadata_bytes(spec.labels, spec.annotations))
        async with sandbox.lock:
            if sandbox.status.state != SandboxState.READY:
                raise FailedPrecondition(f"sandbox {sandbox.id[:12]} is not ready: it was stopped")
            name_key = self.registry.check_container_name(sandbox.id, spec)
            check_mounts(spec.mounts)
            check_devices(spec.devices)
            image = self.images.resolve(spec.image)
            if image is None:
                raise NotFound(f"image {spec.image!r} is not present on this node: pull it first")
            max_bytes = self.images.config.max_virtual_size_bytes
            choices = planning.choose(spec, sandbox.spec, image, requested, self.config, max_bytes)
            if requested.boot == "template":
                cloning.check_request(spec, requested, choices)
            container_id = secrets.token_hex(32)
            self.registry.reserve_container_name(name_key, container_id)
            async with contextlib.AsyncExitStack() as undo:
                undo.callback(self.registry.release_container_name, name_key)
                directory = sandbox.directory / container_id
                state.ensure_private_dir(directory)
                undo.callback(shutil.rmtree, directory, ignore_errors=True)
                container = await self._make(container_id, directory, spec, sandbox, image, requested, choices)
                self.registry.add_container(container)
                undo.pop_all()
            self.registry.container_event(EventType.CREATED, container)
        log.info("container %s created in sandbox %s", container_id[:12], sandbox.id[:12])
        return container_id

    async def _make(
        self, container_id: str, directory: Path, spec: ContainerSpec, sandbox: Sandbox, image: ImageRecord,
        requested: QmprtAnnotations, choices: planning.ContainerChoices,
    ) -> Container:
        """The container's files in ``directory``: overlay, storage, seed, then its records. A template
        container whose template is ready is a clone (``qmprt.pod.cloning``); else it boots cold and the
        template is asked for."""
        key = None
        if requested.boot == "template":
            key = cloning.template_key(image, choices, sandbox.network, self.config, self.accel)
        cloned = key is not None and await cloning.make_clone(self.templates, key, directory, image, choices)
        if not cloned:
            await create_overlay_async(
                image.path, image.format, directory / guest.OVERLAY_FILE, choices.root_disk_bytes,  # type: ignore[arg-type]
                base_virtual_size_bytes=image.virtual_size,
            )
        storage = await plan_storage(
            spec, requested, directory, self.vms.run_dir(container_id), Transport.for_machine(choices.machine)
        )
        if cloned:  # its seed goes through the exec helper at start (its seed disk is the template's)
            await asyncio.to_thread(
                guest.write_identity, directory, container_id, spec, sandbox.spec, requested, storage,
                sandbox.network, choices.command_exit,
            )
        else:
            await asyncio.to_thread(
                guest.write_seed, directory, container_id, spec, sandbox.spec, requested, storage, sandbox.network,
                choices.command_exit, self.config.vm.exec_helper_path(),
            )
        record = planning.container_record(
            container_id, spec, sandbox.id, sandbox.spec, image, requested, choices, storage, self.config,
            (c.record.vm_uid for c in self.registry.all_containers()),
        )
        if key is not None:
            cloning.check(choices, record, storage)
            if cloned:
                record = dataclasses.replace(record, template=key.id)
            else:
                self.templates.request(key)
        # A layout this VM type or host cannot give is refused now, not at start.
        check_host(planning.memory_plan(record))
        return Container.create(container_id, directory, record, ContainerStatus(ContainerState.CREATED, time.time_ns()))

    # -- start ------------------------------------------------------------------------------------------
    async def start(self, container_id: str) -> None:
        container = self.registry.container(container_id)
        sandbox = self.registry.sandbox(container.sandbox_id)
        started = time.monotonic()
        # The sandbox's lock first (as stop_sandbox takes them): two starts in one pod cannot both run.
        async with sandbox.lock, container.lock:
            self._check_startable(container, sandbox)
            log_writer = self._open_log(container, sandbox)
            vm, cgroup = await self._launch(container, sandbox, log_writer)
            self.vms.attach(container, vm, log_writer, cgroup)
            container.update(ContainerState.RUNNING, started_at_ns=vm.status.started_at_ns)
            self.registry.container_event(EventType.STARTED, container)
            await self.vms.pin(container)
            telemetry.VM_STARTS.labels("ok").inc()
            telemetry.VM_START_SECONDS.observe(time.monotonic() - started)
            self.vms.time_boot(container, vm, started)
        log.info("container %s started (pid %s)", container.id[:12], vm.status.pid)

    def _check_startable(self, container: Container, sandbox: Sandbox) -> None:
        if self.registry.containers.get(container.id) is not container:
            # RemoveContainer ran while this call waited for the lock: nothing is left to start.
            raise NotFound(f"container {container.id[:12]} was removed")
        if container.status.state != ContainerState.CREATED:
            raise FailedPrecondition(
                f"container {container.id[:12]} is {container.status.state.value}; only a created container can start"
            )
        if sandbox.status.state != SandboxState.READY:
            raise FailedPrecondition(f"sandbox {sandbox.id[:12]} is not ready")
        running = [
            c for c in self.registry.containers_of(sandbox.id)
            if c.status.state == ContainerState.RUNNING and c is not container
        ]
        if running:
            raise FailedPrecondition(
                f"sandbox {sandbox.id[:12]} already runs container {running[0].spec.metadata.name} "
                f"({running[0].id[:12]}): a VM pod is one VM on the pod's network and runs one container "
                "at a time; stop it first (init containers run to completion before the next)"
            )

    async def _launch(
        self, container: Container, sandbox: Sandbox, log_writer: CRILogWriter | None
    ) -> tuple[VM, cgroups.Cgroup | None]:
        """virtiofsd, the VM's cgroup, the pod's taps, then QEMU; a failure undoes all and marks the
        container exited with StartError."""
        config = guest.vm_config(
            container.id, container.directory, container.record, self.config, self.accel, sandbox.network
        )
        if container.record.template:
            config = cloning.clone_config(config, container.directory)
        cgroup: cgroups.Cgroup | None = None
        nic_fds: list[int] = []
        try:
            shares = container.record.shares
            if shares:
                state.ensure_private_dir(self.vms.run_dir(container.id))
                fs_cgroup = self.vms.share_cgroup(container)
                container.share_daemons = await ShareDaemons.start(container.directory, shares, fs_cgroup.exec_prefix())
            cgroup = self.vms.make_cgroup(container)
            if sandbox.network is not None:
                nic_fds = await asyncio.to_thread(self.networks.open_queues, sandbox.network)
            vm = await VM.start(
                config, container.directory, self.vms.run_dir(container.id), cgroup=cgroup,
                log_writer=log_writer, nic_fds=nic_fds,
            )
            if container.record.template:
                try:
                    await cloning.give_identity(vm, container.directory)
                except BaseException:
                    await vm.stop(grace=0)
                    raise
        except BaseException as err:
            await self._undo_start(container, cgroup, log_writer, err)
            raise
        finally:
            for tap_fd in nic_fds:
                os.close(tap_fd)
        return vm, cgroup

    async def _undo_start(
        self, container: Container, cgroup: cgroups.Cgroup | None, log_writer: CRILogWriter | None,
        err: BaseException,
    ) -> None:
        if cgroup is not None:
            with best_effort(log, f"removing the cgroup {cgroup.path} of a VM that did not start"):
                cgroup.kill()
                cgroup.delete()
        await self.vms.stop_share_daemons(container)
        if log_writer is not None:
            log_writer.close()
        (container.directory / "vm.json").unlink(missing_ok=True)
        if isinstance(err, Exception):
            container.update(
                ContainerState.EXITED, finished_at_ns=time.time_ns(), exit_code=128,
                reason="StartError", message=str(err),
            )
            self.registry.container_event(EventType.STOPPED, container)
        telemetry.VM_STARTS.labels("error").inc()

    def _open_log(self, container: Container, sandbox: Sandbox) -> CRILogWriter | None:
        log_path = container.record.log_path
        if not log_path:
            return None
        parent = Path(log_path).parent
        if not parent.is_dir():
            raise FailedPrecondition(f"log directory {parent} does not exist (kubelet creates it)")
        log_directory = os.path.realpath(sandbox.spec.log_directory)
        if os.path.commonpath([os.path.realpath(parent), log_directory]) != log_directory:
            raise FailedPrecondition(f"the log file's directory {parent} leads outside the log directory {log_directory}")
        try:
            return CRILogWriter(log_path)
        except OSError as err:
            raise FailedPrecondition(f"cannot open the log file {log_path}: {err.strerror or err}") from err

    # -- stop and remove --------------------------------------------------------------------------------
    async def stop(self, container: Container, grace: float) -> None:
        async with container.lock:
            vm = container.vm
            if container.status.state != ContainerState.RUNNING or vm is None:
                return
            await vm.stop(grace)
            self.vms.record_exit(container)

    async def remove(self, container: Container) -> None:
        await self.stop(container, FORCED_STOP_GRACE)
        async with container.lock:
            if container.vm is not None:
                await asyncio.sleep(0)  # let the exit callbacks run
                with contextlib.suppress(FailedPrecondition):
                    container.vm.remove_files()
            self.vms.delete_cgroup(container)
            await self.vms.stop_share_daemons(container)
            shutil.rmtree(self.vms.run_dir(container.id), ignore_errors=True)
            await asyncio.to_thread(shutil.rmtree, container.directory, True)
            if self.registry.forget_container(container):
                self.registry.container_event(EventType.DELETED, container)
        log.info("container %s removed", container.id[:12])
