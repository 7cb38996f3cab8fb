"""The pod runtime: sandboxes and containers over the VM engine, with everything kept on disk.

``Runtime`` is the facade the CRI layer calls; the work is done by its parts:

- ``registry``: the sandboxes and containers by id and name (``qmprt.pod.registry``)
- ``pods``: running, stopping, removing sandboxes (``qmprt.pod.sandboxes``)
- ``lifecycle``: creating, starting, stopping, removing containers (``qmprt.pod.containers``), which
  plans with ``qmprt.pod.planning``
- ``vms``: the VM side shared with recovery: cgroups, virtiofsd, exits, tasks (``qmprt.pod.vms``)

Every mutating call builds its object inside an ``AsyncExitStack`` and keeps the undo steps only on
success, so a failed call leaves nothing behind (no QEMU, netns, cgroup, file or reserved name).
Reads (status, lists, stats) are served from memory and never ask a VM.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qmprt import cgroups, state, telemetry
from qmprt.config import Config
from qmprt.errors import InvalidArgument, NotFound
from qmprt.pod import planning, recovery, running, streams
from qmprt.pod import resources as live_resources
from qmprt.pod.containers import Containers
from qmprt.pod.events import Subscription
from qmprt.pod.metrics import SandboxMetricsInfo, sandbox_metrics
from qmprt.pod.specs import ContainerSpec, Resources, SandboxSpec
from qmprt.pod.network import PodNetworks
from qmprt.pod.live import Container
from qmprt.pod.registry import Registry
from qmprt.pod.sandboxes import Sandboxes
from qmprt.pod.templates import Templates
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.pod.stats import container_stats, sandbox_stats
from qmprt.pod.views import ContainerInfo, ContainerStatsInfo, RuntimeHealth, SandboxInfo, SandboxStatsInfo
from qmprt.pod.vms import ContainerVMs
from qmprt.vm import accel as accel_module
from qmprt.vm.agent import ExecResult
from qmprt.vm.config import VMState

if TYPE_CHECKING:
    from qmprt.image import ImageStore

log = logging.getLogger(__name__)


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
        self.vms = ContainerVMs(config, cgroup_driver, self.run_root, self.registry)
        self.pod_cidr = ""
        self.networks = PodNetworks(config.cni, self.state_root / "cni", self.run_root / "net")
        self.templates = Templates.for_config(config, cgroup_driver)
        self.lifecycle = Containers(
            config, self.registry, self.vms, images, self.networks, self.accel.accel, self.templates
        )
        self.pods = Sandboxes(config, self.registry, self.lifecycle, self.networks, cgroup_driver, self.pods_root)
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
        self.end_event_streams()
        self.vms.cancel_tasks()
        for task in list(self.templates.tasks):
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

    def subscribe(self) -> Subscription:
        """The lifecycle events of every container and sandbox from now on (``qmprt.pod.events``)."""
        return self.registry.events.subscribe()

    def end_event_streams(self) -> None:
        """End every subscription (qmprt stops): their streams finish instead of holding shutdown."""
        self.registry.events.close()

    def update_runtime_config(self, pod_cidr: str) -> None:
        self.pod_cidr = pod_cidr

    # -- sandboxes ----------------------------------------------------------------------------------------
    async def run_sandbox(self, spec: SandboxSpec) -> str:
        return await self.pods.run(spec)

    async def stop_sandbox(self, sandbox_id: str) -> None:
        await self.pods.stop(sandbox_id)

    async def remove_sandbox(self, sandbox_id: str) -> None:
        await self.pods.remove(sandbox_id)

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

    # -- containers ---------------------------------------------------------------------------------------
    async def create_container(self, sandbox_id: str, spec: ContainerSpec) -> str:
        return await self.lifecycle.create(sandbox_id, spec)

    async def start_container(self, container_id: str) -> None:
        await self.lifecycle.start(container_id)

    async def stop_container(self, container_id: str, timeout_s: int) -> None:
        try:
            container = self.registry.container(container_id)
        except NotFound:
            return
        await self.lifecycle.stop(container, float(max(timeout_s, 0)))

    async def remove_container(self, container_id: str) -> None:
        try:
            container = self.registry.container(container_id)
        except NotFound:
            return
        await self.lifecycle.remove(container)

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

    # -- running containers -------------------------------------------------------------------------------
    async def exec_sync(self, container_id: str, argv: Sequence[str], timeout_s: int) -> ExecResult:
        if not argv:
            raise InvalidArgument("exec needs a command")
        return await running.exec_sync(self.registry.container(container_id), argv, timeout_s)

    async def open_exec(self, request: streams.ExecStream) -> streams.StreamProcess:
        container = self.registry.container(request.container_id)
        return await streams.open_exec(container, request.argv, tty=request.tty, stdin=request.stdin)

    async def open_attach(self, request: streams.AttachStream) -> streams.StreamProcess:
        return await streams.open_attach(self.registry.container(request.container_id), stdin=request.stdin)

    async def open_port(self, sandbox_id: str, port: int) -> streams.ByteStream:
        sandbox = self.registry.sandbox(sandbox_id)
        return await streams.open_port(sandbox, self.registry.containers_of(sandbox.id), port)

    async def reopen_log(self, container_id: str) -> None:
        running.reopen_log(self.registry.container(container_id))

    async def update_resources(self, container_id: str, resources: Resources) -> None:
        """Apply new resources to a running VM (see ``qmprt.pod.resources.update``)."""
        container = self.registry.container(container_id)
        vm = running.running_vm(container)
        sandbox = self.registry.sandbox(container.sandbox_id)
        await live_resources.update(container, vm, resources, planning.overhead_mib(sandbox.spec, self.config))

    # -- stats ----------------------------------------------------------------------------------------------
    # Sampling reads cgroup files and walks overlays: it runs in a worker thread, never the event loop.
    async def container_stats(self, container_id: str) -> ContainerStatsInfo:
        container = self.registry.container(container_id)
        return await asyncio.to_thread(container_stats, container)

    async def list_container_stats(
        self, *, id: str = "", sandbox_id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[ContainerStatsInfo]:
        chosen = self.registry.find_containers(id, None, sandbox_id, labels)
        return await asyncio.to_thread(lambda: [container_stats(container) for container in chosen])

    async def sandbox_stats(self, sandbox_id: str) -> SandboxStatsInfo:
        sandbox = self.registry.sandbox(sandbox_id)
        containers = self.registry.containers_of(sandbox.id)
        return await asyncio.to_thread(sandbox_stats, sandbox, containers)

    async def list_sandbox_stats(
        self, *, id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[SandboxStatsInfo]:
        pods = [(sandbox, self.registry.containers_of(sandbox.id)) for sandbox in self.registry.find_sandboxes(id, None, labels)]
        return await asyncio.to_thread(lambda: [sandbox_stats(sandbox, cs) for sandbox, cs in pods])

    async def list_sandbox_metrics(self) -> list[SandboxMetricsInfo]:
        """Every pod's metrics (``qmprt.pod.metrics``), collected in a worker thread."""
        pods = [(sandbox, self.registry.containers_of(sandbox.id)) for sandbox in list(self.sandboxes.values())]
        return await asyncio.to_thread(lambda: [sandbox_metrics(sandbox, containers) for sandbox, containers in pods])

    def image_in_use(self, digest: str) -> bool:
        return self.registry.image_in_use(digest)

    def all_containers(self) -> Iterable[Container]:
        return self.registry.all_containers()
