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
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qmprt import cgroups, state, telemetry
from qmprt.cloudinit import READY_MARKER
from qmprt.config import Config
from qmprt.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    best_effort,
)
from qmprt.image.overlay import create_overlay_async
from qmprt.net import netns
from qmprt.pod import guest, recovery
from qmprt.pod import resources as live_resources
from qmprt.pod.metrics import SandboxMetricsInfo, sandbox_metrics
from qmprt.pod.network import PodNetworks
from qmprt.pod.annotations import network_wiring, parse_annotations
from qmprt.pod.model import ContainerSpec, Resources, SandboxSpec, metadata_bytes
from qmprt.pod.records import Container, ContainerRecord, Sandbox
from qmprt.pod.sizing import size_vm
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.pod.storage import ShareDaemons, check_devices, check_mounts, plan_storage, shares_from_json, shares_to_json
from qmprt.pod.stats import container_stats, sandbox_stats
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
from qmprt.vm.config import VMState
from qmprt.vm.machine import VM
from qmprt.vm.numa import check_host
from qmprt.vm.pinning import parse_cpuset, parse_id_list

if TYPE_CHECKING:
    from qmprt.image import ImageStore

log = logging.getLogger(__name__)

T = TypeVar("T", Sandbox, Container)
# Labels and annotations of every sandbox and container together: the list answers kubelet relists
# every second carry all of them, and must stay well inside gRPC's 16 MiB message.
METADATA_BUDGET_BYTES = 8 << 20
BOOT_TIMER_SECONDS = 600.0
FORCED_STOP_GRACE = 0.0


def _lookup(objects: Mapping[str, T], object_id: str, kind: str) -> T:
    """By full id or unambiguous prefix, as crictl users type them."""
    if not object_id:
        raise InvalidArgument(f"a {kind} id is required")
    found = objects.get(object_id)
    if found is not None:
        return found
    matches = [value for key, value in objects.items() if key.startswith(object_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFound(f"{kind} {object_id!r} does not exist")
    raise InvalidArgument(f"{kind} id prefix {object_id!r} is ambiguous")


def _labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


class Runtime:
    def __init__(self, config: Config, images: ImageStore, cgroup_driver: cgroups.CgroupDriver) -> None:
        self.config = config
        self.images = images
        self.cgroup_driver = cgroup_driver
        self.state_root = state.ensure_private_dir(config.runtime.state_dir)
        self.pods_root = state.ensure_private_dir(self.state_root / "pods")
        self.run_root = state.ensure_private_dir(config.runtime.run_dir)
        self.accel = accel_module.detect(None if config.vm.accel == "auto" else config.vm.accel)
        self.sandboxes: dict[str, Sandbox] = {}
        self.containers: dict[str, Container] = {}
        self._sandbox_names: dict[tuple[str, str, str, int], str] = {}
        self._container_names: dict[tuple[str, str, int], str] = {}
        self.pod_cidr = ""
        self.networks = PodNetworks(config.cni, self.state_root / "cni", self.run_root / "net")
        self._tasks: set[asyncio.Task[None]] = set()
        telemetry.watch_live_vms(
            lambda: sum(1 for c in list(self.containers.values()) if c.status.state == ContainerState.RUNNING)
        )
        log.info("accelerator: %s (%s)", self.accel.accel, self.accel.reason)

    # -- lifecycle of the runtime itself --------------------------------------------------------------
    @classmethod
    async def open(cls, config: Config) -> Runtime:
        from qmprt.image import open_store

        images = open_store(config)
        runtime = cls(config, images, cgroups.detect())
        await recovery.recover(runtime)
        return runtime

    async def close(self) -> None:
        """Let go of every VM without stopping it: the next qmprt adopts them."""
        for task in list(self._tasks):
            task.cancel()
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

    # -- registration (also used by recovery) -------------------------------------------------------
    def register_sandbox(self, sandbox: Sandbox) -> None:
        metadata = sandbox.spec.metadata
        self._sandbox_names[(metadata.name, metadata.namespace, metadata.uid, metadata.attempt)] = sandbox.id
        self.sandboxes[sandbox.id] = sandbox

    def register_container(self, container: Container) -> None:
        metadata = container.spec.metadata
        self._container_names[(container.sandbox_id, metadata.name, metadata.attempt)] = container.id
        self.containers[container.id] = container

    def _forget_container(self, container: Container) -> None:
        metadata = container.spec.metadata
        self._container_names.pop((container.sandbox_id, metadata.name, metadata.attempt), None)
        self.containers.pop(container.id, None)

    def container_run_dir(self, container_id: str) -> Path:
        return self.run_root / "vm" / container_id[:16]

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
        self._check_metadata_budget(metadata_bytes(spec.labels, spec.annotations))
        key = (metadata.name, metadata.namespace, metadata.uid, metadata.attempt)
        if key in self._sandbox_names:
            raise AlreadyExists(
                f"sandbox name {metadata.name}/{metadata.namespace} attempt {metadata.attempt} "
                f"is already used by {self._sandbox_names[key]}"
            )
        sandbox_id = secrets.token_hex(32)
        self._sandbox_names[key] = sandbox_id
        async with contextlib.AsyncExitStack() as undo:
            undo.callback(self._sandbox_names.pop, key, None)
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
            self.sandboxes[sandbox_id] = sandbox
            undo.pop_all()
        log.info("sandbox %s ready (%s/%s)", sandbox_id[:12], metadata.namespace, metadata.name)
        return sandbox_id

    def sandbox(self, sandbox_id: str) -> SandboxInfo:
        return _lookup(self.sandboxes, sandbox_id, "sandbox").info()

    def sandbox_network(self, sandbox_id: str) -> dict[str, Any] | None:
        """The pod's network record (CNI results, wiring) for verbose status; None without one."""
        network = _lookup(self.sandboxes, sandbox_id, "sandbox").network
        return network.to_json() if network is not None else None

    def list_sandboxes(
        self, *, id: str = "", state: SandboxState | None = None, labels: Mapping[str, str] | None = None
    ) -> list[SandboxInfo]:
        found = []
        for sandbox in list(self.sandboxes.values()):
            if id and not sandbox.id.startswith(id):
                continue
            if state is not None and sandbox.status.state != state:
                continue
            if labels and not _labels_match(sandbox.spec.labels, labels):
                continue
            found.append(sandbox.info())
        return found

    def _containers_of(self, sandbox_id: str) -> list[Container]:
        return [c for c in list(self.containers.values()) if c.sandbox_id == sandbox_id]

    async def stop_sandbox(self, sandbox_id: str) -> None:
        try:
            sandbox = _lookup(self.sandboxes, sandbox_id, "sandbox")
        except NotFound:
            return
        async with sandbox.lock:
            for container in self._containers_of(sandbox.id):
                await self._stop_container(container, FORCED_STOP_GRACE)
            # A failed CNI DEL raises before the namespace goes: kubelet retries StopPodSandbox.
            await self.networks.teardown(sandbox.id, sandbox.directory, sandbox.network)
            sandbox.network = None
            await asyncio.to_thread(netns.remove, netns.netns_name(sandbox.id))
            if sandbox.status.state != SandboxState.NOTREADY:
                sandbox.set_state(SandboxState.NOTREADY)

    async def remove_sandbox(self, sandbox_id: str) -> None:
        try:
            sandbox = _lookup(self.sandboxes, sandbox_id, "sandbox")
        except NotFound:
            return
        await self.stop_sandbox(sandbox.id)
        async with sandbox.lock:
            for container in self._containers_of(sandbox.id):
                await self._remove_container(container)
            self._delete_sandbox_cgroup(sandbox)
            await asyncio.to_thread(shutil.rmtree, sandbox.directory, True)
            metadata = sandbox.spec.metadata
            self._sandbox_names.pop((metadata.name, metadata.namespace, metadata.uid, metadata.attempt), None)
            self.sandboxes.pop(sandbox.id, None)
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

    def _check_metadata_budget(self, adding: int) -> None:
        used = sum(metadata_bytes(s.spec.labels, s.spec.annotations) for s in list(self.sandboxes.values()))
        used += sum(metadata_bytes(c.spec.labels, c.spec.annotations) for c in list(self.containers.values()))
        if used + adding > METADATA_BUDGET_BYTES:
            raise ResourceExhausted(
                f"the labels and annotations of all pods and containers would add up to {used + adding} bytes; "
                f"qmprt keeps them under {METADATA_BUDGET_BYTES} bytes so that listing them always fits one "
                "answer: remove pods, or shrink their annotations"
            )

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
        sandbox = _lookup(self.sandboxes, sandbox_id, "sandbox")
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
        self._check_metadata_budget(metadata_bytes(spec.labels, spec.annotations))
        async with sandbox.lock:
            if sandbox.status.state != SandboxState.READY:
                raise FailedPrecondition(f"sandbox {sandbox.id[:12]} is not ready: it was stopped")
            name_key = (sandbox.id, metadata.name, metadata.attempt)
            if name_key in self._container_names:
                raise AlreadyExists(
                    f"container name {metadata.name} attempt {metadata.attempt} is already used in this "
                    f"sandbox by {self._container_names[name_key][:12]}"
                )
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
            self._container_names[name_key] = container_id
            async with contextlib.AsyncExitStack() as undo:
                undo.callback(self._container_names.pop, name_key, None)
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
                self.containers[container_id] = container
                undo.pop_all()
        log.info("container %s created in sandbox %s", container_id[:12], sandbox.id[:12])
        return container_id

    def container(self, container_id: str) -> ContainerInfo:
        return _lookup(self.containers, container_id, "container").info()

    def list_containers(
        self,
        *,
        id: str = "",
        state: ContainerState | None = None,
        sandbox_id: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> list[ContainerInfo]:
        found = []
        for container in list(self.containers.values()):
            if id and not container.id.startswith(id):
                continue
            if sandbox_id and not container.sandbox_id.startswith(sandbox_id):
                continue
            if state is not None and container.status.state != state:
                continue
            if labels and not _labels_match(container.spec.labels, labels):
                continue
            found.append(container.info())
        return found

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

    def make_cgroup(self, container: Container) -> cgroups.Cgroup:
        """The VM's cgroup with the container's hard limits; QEMU is exec'd straight into it."""
        cgroup = self.cgroup_driver.create(container.record.cgroup_path)
        resources = container.spec.resources or Resources()
        try:
            cgroup.set_limits(
                cgroups.CgroupLimits(
                    memory_bytes=container.record.cgroup_memory_bytes,
                    cpu_quota_us=resources.cpu_quota if resources.cpu_quota > 0 else None,
                    cpu_period_us=resources.cpu_period if resources.cpu_period > 0 else None,
                    cpu_shares=resources.cpu_shares if resources.cpu_shares > 0 else None,
                    pids_max=self.config.cgroups.pids_max,
                    cpuset_cpus=resources.cpuset_cpus or None,
                    cpuset_mems=resources.cpuset_mems or None,
                )
            )
        except (ValueError, cgroups.CgroupError) as err:
            with best_effort(log, f"removing the cgroup {cgroup.path}"):
                cgroup.delete()
            raise InvalidArgument(f"container resources cannot be applied: {err}") from err
        return cgroup

    async def start_container(self, container_id: str) -> None:
        container = _lookup(self.containers, container_id, "container")
        sandbox = _lookup(self.sandboxes, container.sandbox_id, "sandbox")
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
                c for c in self._containers_of(sandbox.id)
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
                    # virtiofsd runs beside the VM's cgroup, not in it: its memory is not the guest's.
                    state.ensure_private_dir(self.container_run_dir(container.id))
                    fs_cgroup = self.cgroup_driver.create(f"{container.record.cgroup_path}-fs")
                    container.share_daemons = await ShareDaemons.start(
                        container.directory, shares, fs_cgroup.exec_prefix()
                    )
                cgroup = self.make_cgroup(container)
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
                await self.stop_share_daemons(container)
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
            self.attach_vm(container, vm, log_writer, cgroup)
            container.update(ContainerState.RUNNING, started_at_ns=vm.status.started_at_ns)
            await live_resources.pin(container)
            telemetry.VM_STARTS.labels("ok").inc()
            telemetry.VM_START_SECONDS.observe(time.monotonic() - started)
            self._background(self._time_boot(vm, started), f"boot timer of {container.id[:12]}")
        log.info("container %s started (pid %s)", container.id[:12], vm.status.pid)

    def attach_vm(
        self, container: Container, vm: VM, log_writer: CRILogWriter | None, cgroup: cgroups.Cgroup | None
    ) -> None:
        container.vm = vm
        container.cgroup = cgroup
        container.log_writer = log_writer
        vm.on_exit(lambda _vm: self._on_vm_exit(container))

    async def _time_boot(self, vm: VM, started: float) -> None:
        """The boot time of a guest that says it is ready on its console (qmprt's marker)."""
        with contextlib.suppress(asyncio.TimeoutError, FailedPrecondition):
            await vm.wait_for_console(READY_MARKER, BOOT_TIMER_SECONDS)
            telemetry.VM_BOOT_SECONDS.observe(time.monotonic() - started)

    def _background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``work`` as a task the runtime keeps a reference to; its failure is logged."""
        task = asyncio.get_running_loop().create_task(work, name=what)
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("%s failed: %s", what, finished.exception())

        task.add_done_callback(done)

    def _on_vm_exit(self, container: Container) -> None:
        container.sync_from_vm()
        telemetry.VM_EXITS.labels(container.status.reason or "unknown").inc()
        if container.log_writer is not None:
            container.log_writer.close()
            container.log_writer = None
        if container.share_daemons is not None:
            self._background(self.stop_share_daemons(container), f"virtiofsd stop of {container.id[:12]}")
        log.info(
            "container %s exited: %s %s", container.id[:12], container.status.exit_code, container.status.reason
        )

    async def stop_share_daemons(self, container: Container) -> None:
        """virtiofsd ends with its QEMU connection; stop any left and remove their cgroup."""
        daemons, container.share_daemons = container.share_daemons, None
        if daemons is not None:
            await daemons.stop()
        fs_cgroup = f"{container.record.cgroup_path}-fs"
        with best_effort(log, f"removing the virtiofsd cgroup {fs_cgroup}"):
            if self.cgroup_driver.exists(fs_cgroup):
                self.cgroup_driver.open(fs_cgroup).delete()

    async def stop_container(self, container_id: str, timeout_s: int) -> None:
        try:
            container = _lookup(self.containers, container_id, "container")
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
            container = _lookup(self.containers, container_id, "container")
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
            with best_effort(log, f"removing the cgroup of container {container.id[:12]}"):
                if self.cgroup_driver.exists(container.record.cgroup_path):
                    self.cgroup_driver.open(container.record.cgroup_path).delete()
            await self.stop_share_daemons(container)
            shutil.rmtree(self.container_run_dir(container.id), ignore_errors=True)
            await asyncio.to_thread(shutil.rmtree, container.directory, True)
            self._forget_container(container)
        log.info("container %s removed", container.id[:12])

    def _running_vm(self, container_id: str) -> tuple[Container, VM]:
        container = _lookup(self.containers, container_id, "container")
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
        sandbox = _lookup(self.sandboxes, container.sandbox_id, "sandbox")
        await live_resources.update(container, vm, resources, self.overhead_mib(sandbox))

    async def pin(self, container: Container) -> None:
        await live_resources.pin(container)

    # -- stats ----------------------------------------------------------------------------------------------
    # Sampling reads cgroup files and walks overlays: it runs in a worker thread, never the event loop.
    async def container_stats(self, container_id: str) -> ContainerStatsInfo:
        container = _lookup(self.containers, container_id, "container")
        return await asyncio.to_thread(container_stats, self, container)

    async def list_container_stats(
        self, *, id: str = "", sandbox_id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[ContainerStatsInfo]:
        infos = self.list_containers(id=id, sandbox_id=sandbox_id, labels=labels)
        chosen = [self.containers[info.id] for info in infos if info.id in self.containers]
        return await asyncio.to_thread(lambda: [container_stats(self, container) for container in chosen])

    async def sandbox_stats(self, sandbox_id: str) -> SandboxStatsInfo:
        sandbox = _lookup(self.sandboxes, sandbox_id, "sandbox")
        containers = self._containers_of(sandbox.id)
        return await asyncio.to_thread(sandbox_stats, self, sandbox, containers)

    async def list_sandbox_stats(
        self, *, id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[SandboxStatsInfo]:
        infos = self.list_sandboxes(id=id, labels=labels)
        pods = [(self.sandboxes[i.id], self._containers_of(i.id)) for i in infos if i.id in self.sandboxes]
        return await asyncio.to_thread(lambda: [sandbox_stats(self, sandbox, cs) for sandbox, cs in pods])

    async def list_sandbox_metrics(self) -> list[SandboxMetricsInfo]:
        """Every pod's metrics (``qmprt.pod.metrics``), collected in a worker thread."""
        pods = [(sandbox, self._containers_of(sandbox.id)) for sandbox in list(self.sandboxes.values())]
        return await asyncio.to_thread(lambda: [sandbox_metrics(sandbox, containers) for sandbox, containers in pods])

    def image_in_use(self, digest: str) -> bool:
        return any(container.record.image_digest == digest for container in self.containers.values())

    def all_containers(self) -> Iterable[Container]:
        return list(self.containers.values())
