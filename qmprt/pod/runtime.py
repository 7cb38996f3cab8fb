"""The pod runtime: sandboxes and containers over the VM engine, with everything kept on disk.

Every mutating call builds its object inside an ``AsyncExitStack`` and keeps the undo steps only on
success, so a failed call leaves nothing behind (no QEMU, netns, cgroup, file or reserved name).
Reads (status, lists, stats) are served from memory and never ask a VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qmprt import cgroups, state, telemetry
from qmprt.config import Config
from qmprt.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    best_effort,
)
from qmprt.image.overlay import create_overlay_async
from qmprt.net import netns
from qmprt.pod import guest, recovery
from qmprt.pod import resources as live_resources
from qmprt.pod.metrics import SandboxMetricsInfo, sandbox_metrics
from qmprt.pod.network import PodNetworks
from qmprt.pod.registry import Registry
from qmprt.pod.annotations import network_wiring, parse_annotations
from qmprt.pod.model import ContainerSpec, Resources, SandboxSpec, metadata_bytes
from qmprt.pod.records import Container, ContainerRecord, Sandbox
from qmprt.pod.sizing import size_vm
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.pod.storage import ShareDaemons, check_devices, check_mounts, plan_storage, shares_from_json, shares_to_json
from qmprt.pod.stats import container_stats, sandbox_stats
from qmprt.pod.vms import ContainerVMs
from qmprt.pod.types import (
    ContainerInfo,
    ContainerStatsInfo,
    ContainerStatus,
    RuntimeHealth,
    SandboxInfo,
    SandboxStatsInfo,
    SandboxStatus,
)
from qmprt.vm import accel as accel_module
from qmprt.vm.agent import ExecResult
from qmprt.vm.console import CRILogWriter
from qmprt.vm.machine import VM, VMState
from qmprt.vm.numa import check_host
from qmprt.vm.pinning import parse_cpuset, parse_id_list

if TYPE_CHECKING:
    from qmprt.image import ImageStore

log = logging.getLogger(__name__)

FORCED_STOP_GRACE = 0.0


class Runtime:
    def __init__(self, config: Config, images: ImageStore, cgroup_driver: cgroups.CgroupDriver) -> None:
        self.config = config
        self.images = images
        self.cgroup_driver = cgroup_driver
        self.state_root = state.ensure_private_dir(config.runtime.state_dir)
        self.pods_root = state.ensure_private_dir(self.state_root / "pods")
        self.run_root = state.ensure_private_dir(config.runtime.run_dir)
        self.accel = accel_module.detect(None if config.vm.accel == "auto" else config.vm.accel)
        self.registry = Registry()
        self.sandboxes = self.registry.sandboxes
        self.containers = self.registry.containers
        self.vms = ContainerVMs(config, cgroup_driver, self.run_root)
        self.pod_cidr = ""
        self.networks = PodNetworks(config.cni, self.state_root / "cni", self.run_root / "net")
        telemetry.watch_live_vms(self.registry.running_count)
        log.info("accelerator: %s (%s)", self.accel.accel, self.accel.reason)

    # -- lifecycle of the runtime itself --------------------------------------------------------------
    @classmethod
    async def open(cls, config: Config) -> Runtime:
        from qmprt.image import open_store

        images = open_store(config)
        runtime = cls(config, images, cgroups.detect())
        await runtime.recover()
        return runtime

    async def recover(self) -> None:
        """Take over what an earlier qmprt left under the state root (``qmprt.pod.recovery``)."""
        await recovery.recover(self.state_root, self.registry, self.vms, self.networks)

    async def close(self) -> None:
        """Let go of every VM without stopping it: the next qmprt adopts them."""
        self.vms.cancel_tasks()
        for container in list(self.containers.values()):
            if container.vm is not None and container.vm.status.state != VMState.EXITED:
                await container.vm.detach()
            if container.log_writer is not None:
                container.log_writer.close()
        self.networks.close()

    def health(self) -> RuntimeHealth:
        conf_dir = self.config.cni.conf_dir
        has_cni = self.networks.ready()
        return RuntimeHealth(
            runtime_ready=True,
            runtime_reason="",
            runtime_message=f"qmprt is up; accelerator {self.accel.accel}",
            network_ready=has_cni,
            network_reason="" if has_cni else "NetworkPluginNotReady",
            network_message="" if has_cni else f"no CNI configuration in {conf_dir}",
        )

    def cgroup_driver_name(self) -> str:
        return self.config.cgroups.driver

    def update_runtime_config(self, pod_cidr: str) -> None:
        self.pod_cidr = pod_cidr

    def container_run_dir(self, container_id: str) -> Path:
        return self.vms.run_dir(container_id)

    # -- sandboxes ----------------------------------------------------------------------------------------
    async def run_sandbox(self, spec: SandboxSpec) -> str:
        metadata = spec.metadata
        if not metadata.name or not metadata.namespace or not metadata.uid:
            raise InvalidArgument("sandbox metadata needs name, namespace and uid")
        if spec.runtime_handler not in ("", *self.config.runtime.handlers):
            raise InvalidArgument(
                f"unknown runtime handler {spec.runtime_handler!r}; this qmprt serves "
                f"{', '.join(repr(h) for h in ('', *self.config.runtime.handlers))}"
            )
        if spec.log_directory and not os.path.isabs(spec.log_directory):
            raise InvalidArgument(f"log_directory {spec.log_directory!r} must be an absolute path")
        wiring_mode = network_wiring(spec.annotations, self.config.cni.wiring)
        if spec.cgroup_parent:
            self._parent_path(spec.cgroup_parent)
        self.registry.check_metadata_budget(metadata_bytes(spec.labels, spec.annotations))
        sandbox_id = secrets.token_hex(32)
        key = self.registry.reserve_sandbox_name(spec, sandbox_id)
        async with contextlib.AsyncExitStack() as undo:
            undo.callback(self.registry.release_sandbox_name, key)
            directory = self.pods_root / sandbox_id
            state.ensure_private_dir(directory)
            undo.callback(shutil.rmtree, directory, ignore_errors=True)
            netns_name = netns.netns_name(sandbox_id)
            undo.callback(netns.remove, netns_name)
            netns_path = await asyncio.to_thread(netns.create, netns_name)
            network = await self.networks.setup(sandbox_id, spec, directory, str(netns_path), wiring_mode)
            undo.push_async_callback(self.networks.teardown, sandbox_id, directory, network)
            pod_ips = network.pod_ips() if network is not None else ()
            sandbox = Sandbox.create(
                sandbox_id, directory, spec,
                SandboxStatus(
                    SandboxState.READY, time.time_ns(), netns_path=str(netns_path),
                    ip=pod_ips[0] if pod_ips else "", additional_ips=pod_ips[1:],
                ),
            )
            sandbox.network = network
            if network is not None:
                await self.networks.start_responders(sandbox_id, spec, network)
            self.registry.add_sandbox(sandbox)
            undo.pop_all()
        log.info("sandbox %s ready (%s/%s)", sandbox_id[:12], metadata.namespace, metadata.name)
        return sandbox_id

    def sandbox(self, sandbox_id: str) -> SandboxInfo:
        return self.registry.sandbox(sandbox_id).info()

    def sandbox_network(self, sandbox_id: str) -> dict[str, Any] | None:
        """The pod's network record (CNI results, wiring) for verbose status; None without one."""
        network = self.registry.sandbox(sandbox_id).network
        return network.to_json() if network is not None else None

    def list_sandboxes(
        self, *, id: str = "", state: SandboxState | None = None, labels: Mapping[str, str] | None = None
    ) -> list[SandboxInfo]:
        return [sandbox.info() for sandbox in self.registry.find_sandboxes(id, state, labels)]

    async def stop_sandbox(self, sandbox_id: str) -> None:
        try:
            sandbox = self.registry.sandbox(sandbox_id)
        except NotFound:
            return
        async with sandbox.lock:
            for container in self.registry.containers_of(sandbox.id):
                await self._stop_container(container, FORCED_STOP_GRACE)
            # A failed CNI DEL raises before the namespace goes: kubelet retries StopPodSandbox.
            await self.networks.teardown(sandbox.id, sandbox.directory, sandbox.network)
            sandbox.network = None
            await asyncio.to_thread(netns.remove, netns.netns_name(sandbox.id))
            if sandbox.status.state != SandboxState.NOTREADY:
                sandbox.set_state(SandboxState.NOTREADY)

    async def remove_sandbox(self, sandbox_id: str) -> None:
        try:
            sandbox = self.registry.sandbox(sandbox_id)
        except NotFound:
            return
        await self.stop_sandbox(sandbox.id)
        async with sandbox.lock:
            for container in self.registry.containers_of(sandbox.id):
                await self._remove_container(container)
            self._delete_sandbox_cgroup(sandbox)
            await asyncio.to_thread(shutil.rmtree, sandbox.directory, True)
            self.registry.forget_sandbox(sandbox)
        log.info("sandbox %s removed", sandbox.id[:12])

    def _parent_path(self, cgroup_parent: str) -> str:
        try:
            return cgroups.parent_to_path(cgroup_parent, self.config.cgroups.driver)  # type: ignore[arg-type]
        except ValueError as err:
            raise InvalidArgument(f"cgroup_parent: {err}") from err

    def sandbox_cgroup_path(self, sandbox: Sandbox) -> str:
        if sandbox.spec.cgroup_parent:
            return self._parent_path(sandbox.spec.cgroup_parent)
        return f"{self.config.cgroups.root}/{sandbox.id[:16]}"

    def _delete_sandbox_cgroup(self, sandbox: Sandbox) -> None:
        if sandbox.spec.cgroup_parent:
            return  # kubelet owns the pod's cgroup
        path = self.sandbox_cgroup_path(sandbox)
        with best_effort(log, f"removing the cgroup {path} of sandbox {sandbox.id[:12]}"):
            if self.cgroup_driver.exists(path):
                self.cgroup_driver.open(path).delete()
        others = [other for other in self.sandboxes.values() if other is not sandbox and not other.spec.cgroup_parent]
        if not others:
            # The runtime's own parent cgroup goes with its last sandbox, unless another qmprt uses it.
            with best_effort(log, f"removing the runtime's cgroup root {self.config.cgroups.root}"):
                if self.cgroup_driver.exists(self.config.cgroups.root):
                    self.cgroup_driver.open(self.config.cgroups.root).delete_if_empty()

    # -- containers ---------------------------------------------------------------------------------------
    async def create_container(self, sandbox_id: str, spec: ContainerSpec) -> str:
        sandbox = self.registry.sandbox(sandbox_id)
        metadata = spec.metadata
        if not metadata.name:
            raise InvalidArgument("container metadata needs a name")
        if not spec.image:
            raise InvalidArgument("container needs an image")
        if spec.log_path and (os.path.isabs(spec.log_path) or ".." in Path(spec.log_path).parts):
            raise InvalidArgument(
                f"log_path {spec.log_path!r} must be relative to the sandbox's log_directory, without '..'"
            )
        if spec.log_path and not sandbox.spec.log_directory:
            raise InvalidArgument("log_path is set but the sandbox has no log_directory")
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
            boot_files = image.boot if requested.boot != "disk" else None
            if requested.boot != "disk" and boot_files is None:
                raise InvalidArgument(
                    f"annotation qmprt.io/boot={requested.boot}: image {spec.image!r} has no kernel attached; "
                    "import it with `qmprt ctl image import … --kernel K --initrd I --cmdline C`, or boot from disk"
                )
            requested.check_data_volumes(self.images.config.max_virtual_size_bytes)
            root_disk_bytes = None
            if requested.root_volume_size_bytes is not None:
                root_disk_bytes = requested.check_root_volume(image.virtual_size, self.images.config.max_virtual_size_bytes)
            size = size_vm(
                spec.resources, self.config.vm.cpus, self.config.vm.memory_mib, self.overhead_mib(sandbox)
            )
            vcpus = requested.vcpu_count(size.vcpus)
            resources = spec.resources or Resources()
            if resources.cpuset_cpus:
                parse_cpuset(resources.cpuset_cpus)
            host_nodes = parse_id_list(resources.cpuset_mems, "NUMA node") if resources.cpuset_mems else ()
            container_id = secrets.token_hex(32)
            self.registry.reserve_container_name(name_key, container_id)
            async with contextlib.AsyncExitStack() as undo:
                undo.callback(self.registry.release_container_name, name_key)
                directory = sandbox.directory / container_id
                state.ensure_private_dir(directory)
                undo.callback(shutil.rmtree, directory, ignore_errors=True)
                await create_overlay_async(
                    image.path, image.format, directory / guest.OVERLAY_FILE, root_disk_bytes,  # type: ignore[arg-type]
                    base_virtual_size_bytes=image.virtual_size,
                )
                machine = "microvm" if requested.boot == "microvm" else "q35"
                plan = await plan_storage(
                    spec, requested, directory, self.container_run_dir(container_id), guest.transport(machine)
                )
                command_exit = requested.command_exit or self.config.vm.command_exit
                await asyncio.to_thread(
                    guest.write_seed, directory, container_id, spec, sandbox.spec, requested, plan, sandbox.network,
                    command_exit,
                )
                record = ContainerRecord(
                    spec=spec,
                    sandbox_id=sandbox.id,
                    image_digest=image.digest,
                    image_path=image.path,
                    image_format=image.format,
                    log_path=os.path.join(sandbox.spec.log_directory, spec.log_path) if spec.log_path else "",
                    cgroup_path=f"{self.sandbox_cgroup_path(sandbox)}/qmprt-{container_id[:16]}",
                    vcpus=vcpus,
                    guest_memory_mib=size.guest_memory_mib,
                    cgroup_memory_bytes=size.cgroup_memory_bytes,
                    host_nodes=host_nodes,
                    guest_numa_nodes=requested.guest_numa_nodes(vcpus),
                    hugepage_page_kib=size.hugepage_page_kib,
                    seed_format=requested.seed_format,
                    machine=machine,
                    kernel=boot_files.kernel if boot_files else None,
                    initrd=boot_files.initrd if boot_files else None,
                    cmdline=boot_files.cmdline if boot_files else "",
                    volume_args=plan.volume_args,
                    shares=shares_to_json(plan.shares),
                    command_exit=command_exit,
                    vm_uid=guest.allocate_vm_uid(self.config.vm, (c.record.vm_uid for c in self.containers.values())),
                )
                # A layout this VM type or host cannot give is refused now, not at start.
                check_host(guest.vm_config(container_id, directory, record, self.config, self.accel.accel).memory_plan())
                container = Container.create(
                    container_id, directory, record, ContainerStatus(ContainerState.CREATED, time.time_ns())
                )
                self.registry.add_container(container)
                undo.pop_all()
        log.info("container %s created in sandbox %s", container_id[:12], sandbox.id[:12])
        return container_id

    def container(self, container_id: str) -> ContainerInfo:
        return self.registry.container(container_id).info()

    def list_containers(
        self,
        *,
        id: str = "",
        state: ContainerState | None = None,
        sandbox_id: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> list[ContainerInfo]:
        return [container.info() for container in self.registry.find_containers(id, state, sandbox_id, labels)]

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

    def overhead_mib(self, sandbox: Sandbox) -> int:
        """The VM's host memory besides guest RAM: the pod's RuntimeClass overhead when it states
        one (kubelet then accounts it to the pod), else the configured ``vm.memory_overhead_mib``."""
        overhead = sandbox.spec.overhead
        if overhead is not None and overhead.memory_limit_in_bytes > 0:
            return overhead.memory_limit_in_bytes >> 20
        return self.config.vm.memory_overhead_mib

    async def start_container(self, container_id: str) -> None:
        container = self.registry.container(container_id)
        sandbox = self.registry.sandbox(container.sandbox_id)
        started = time.monotonic()
        # The sandbox's lock first (as stop_sandbox takes them): two starts in one pod cannot both run.
        async with sandbox.lock, container.lock:
            if self.containers.get(container.id) is not container:
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
            log_writer = self._open_log(container, sandbox)
            config = guest.vm_config(
                container.id, container.directory, container.record, self.config, self.accel.accel, sandbox.network
            )
            cgroup: cgroups.Cgroup | None = None
            nic_fds: list[int] = []
            try:
                shares = shares_from_json(container.record.shares)
                if shares:
                    state.ensure_private_dir(self.container_run_dir(container.id))
                    fs_cgroup = self.vms.share_cgroup(container)
                    container.share_daemons = await ShareDaemons.start(
                        container.directory, shares, fs_cgroup.exec_prefix()
                    )
                cgroup = self.vms.make_cgroup(container)
                if sandbox.network is not None:
                    nic_fds = await asyncio.to_thread(self.networks.open_queues, sandbox.network)
                vm = await VM.start(
                    config, container.directory, self.container_run_dir(container.id), cgroup=cgroup,
                    log_writer=log_writer, nic_fds=nic_fds,
                )
            except BaseException as err:
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
                telemetry.VM_STARTS.labels("error").inc()
                raise
            finally:
                for tap_fd in nic_fds:
                    os.close(tap_fd)
            self.vms.attach(container, vm, log_writer, cgroup)
            container.update(ContainerState.RUNNING, started_at_ns=vm.status.started_at_ns)
            await self.vms.pin(container)
            telemetry.VM_STARTS.labels("ok").inc()
            telemetry.VM_START_SECONDS.observe(time.monotonic() - started)
            self.vms.time_boot(container, vm, started)
        log.info("container %s started (pid %s)", container.id[:12], vm.status.pid)

    async def stop_container(self, container_id: str, timeout_s: int) -> None:
        try:
            container = self.registry.container(container_id)
        except NotFound:
            return
        await self._stop_container(container, float(max(timeout_s, 0)))

    async def _stop_container(self, container: Container, grace: float) -> None:
        async with container.lock:
            vm = container.vm
            if container.status.state != ContainerState.RUNNING or vm is None:
                return
            await vm.stop(grace)
            container.sync_from_vm()

    async def remove_container(self, container_id: str) -> None:
        try:
            container = self.registry.container(container_id)
        except NotFound:
            return
        await self._remove_container(container)

    async def _remove_container(self, container: Container) -> None:
        await self._stop_container(container, FORCED_STOP_GRACE)
        async with container.lock:
            if container.vm is not None:
                await asyncio.sleep(0)  # let the exit callbacks run
                with contextlib.suppress(FailedPrecondition):
                    container.vm.remove_files()
            self.vms.delete_cgroup(container)
            await self.vms.stop_share_daemons(container)
            shutil.rmtree(self.container_run_dir(container.id), ignore_errors=True)
            await asyncio.to_thread(shutil.rmtree, container.directory, True)
            self.registry.forget_container(container)
        log.info("container %s removed", container.id[:12])

    def _running_vm(self, container_id: str) -> tuple[Container, VM]:
        container = self.registry.container(container_id)
        if container.status.state != ContainerState.RUNNING or container.vm is None:
            raise FailedPrecondition(f"container {container.id[:12]} is not running")
        return container, container.vm

    async def exec_sync(self, container_id: str, argv: Sequence[str], timeout_s: int) -> ExecResult:
        if not argv:
            raise InvalidArgument("exec needs a command")
        container, vm = self._running_vm(container_id)
        try:
            return await vm.agent.exec(list(argv), timeout=float(timeout_s) if timeout_s > 0 else None)
        except (Unavailable, FailedPrecondition) as err:
            with contextlib.suppress(asyncio.TimeoutError):
                await vm.wait_exit(1.0)  # a channel reset because QEMU died: let its exit be seen
            if vm.status.state in (VMState.EXITED, VMState.STOPPING):
                raise FailedPrecondition(
                    f"container {container.id[:12]} stopped while the command ran: {vm.status.message or err}"
                ) from err
            raise

    async def reopen_log(self, container_id: str) -> None:
        container, _ = self._running_vm(container_id)
        if container.log_writer is None:
            raise FailedPrecondition(f"container {container.id[:12]} has no log file")
        try:
            container.log_writer.reopen()
        except OSError as err:
            raise FailedPrecondition(f"cannot reopen the log file {container.record.log_path}: {err}") from err

    async def update_resources(self, container_id: str, resources: Resources) -> None:
        """Apply new resources to a running VM (see ``qmprt.pod.resources.update``)."""
        container, vm = self._running_vm(container_id)
        sandbox = self.registry.sandbox(container.sandbox_id)
        await live_resources.update(container, vm, resources, self.overhead_mib(sandbox))

    # -- stats ----------------------------------------------------------------------------------------------
    # Sampling reads cgroup files and walks overlays: it runs in a worker thread, never the event loop.
    async def container_stats(self, container_id: str) -> ContainerStatsInfo:
        container = self.registry.container(container_id)
        return await asyncio.to_thread(container_stats, container)

    async def list_container_stats(
        self, *, id: str = "", sandbox_id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[ContainerStatsInfo]:
        infos = self.list_containers(id=id, sandbox_id=sandbox_id, labels=labels)
        chosen = [self.containers[info.id] for info in infos if info.id in self.containers]
        return await asyncio.to_thread(lambda: [container_stats(container) for container in chosen])

    async def sandbox_stats(self, sandbox_id: str) -> SandboxStatsInfo:
        sandbox = self.registry.sandbox(sandbox_id)
        containers = self.registry.containers_of(sandbox.id)
        return await asyncio.to_thread(sandbox_stats, sandbox, containers)

    async def list_sandbox_stats(
        self, *, id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[SandboxStatsInfo]:
        infos = self.list_sandboxes(id=id, labels=labels)
        pods = [(self.sandboxes[i.id], self.registry.containers_of(i.id)) for i in infos if i.id in self.sandboxes]
        return await asyncio.to_thread(lambda: [sandbox_stats(sandbox, cs) for sandbox, cs in pods])

    async def list_sandbox_metrics(self) -> list[SandboxMetricsInfo]:
        """Every pod's metrics (``qmprt.pod.metrics``), collected in a worker thread."""
        pods = [(sandbox, self.registry.containers_of(sandbox.id)) for sandbox in list(self.sandboxes.values())]
        return await asyncio.to_thread(lambda: [sandbox_metrics(sandbox, containers) for sandbox, containers in pods])

    def image_in_use(self, digest: str) -> bool:
        return self.registry.image_in_use(digest)

    def all_containers(self) -> Iterable[Container]:
        return self.registry.all_containers()
