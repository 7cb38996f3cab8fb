"""The VM side of a container, shared by StartContainer and recovery: its cgroup, its virtiofsd,
what happens when its QEMU exits, and the background tasks that outlive a call.

Every task started here is kept in ``tasks`` until it ends (a task nobody references may be
collected mid-flight), and its failure is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from qmprt import cgroups, telemetry
from qmprt.cloudinit import READY_MARKER
from qmprt.config import Config
from qmprt.errors import FailedPrecondition, InvalidArgument, QmprtError, best_effort
from qmprt.pod import resources as live_resources
from qmprt.pod.specs import Resources
from qmprt.pod.events import EventType
from qmprt.pod.live import Container
from qmprt.pod.registry import Registry
from qmprt.vm.console import CRILogWriter
from qmprt.vm.machine import VM

log = logging.getLogger(__name__)

BOOT_TIMER_SECONDS = 600.0


class ContainerVMs:
    def __init__(
        self, config: Config, cgroup_driver: cgroups.CgroupDriver, run_root: Path, registry: Registry
    ) -> None:
        self.config = config
        self.registry = registry  # announces the exits
        self.cgroup_driver = cgroup_driver
        self.run_root = run_root
        self.tasks: set[asyncio.Task[None]] = set()

    def run_dir(self, container_id: str) -> Path:
        return self.run_root / "vm" / container_id[:16]

    # -- cgroups ----------------------------------------------------------------------------------------
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

    def existing_cgroup(self, container: Container) -> cgroups.Cgroup | None:
        """The VM's cgroup if it is still there (recovery); None when gone or unreadable."""
        path = container.record.cgroup_path
        try:
            return self.cgroup_driver.open(path) if self.cgroup_driver.exists(path) else None
        except QmprtError as err:
            log.warning("container %s: its cgroup %s cannot be opened: %s", container.id[:12], path, err)
            return None

    def delete_cgroup(self, container: Container) -> None:
        with best_effort(log, f"removing the cgroup of container {container.id[:12]}"):
            if self.cgroup_driver.exists(container.record.cgroup_path):
                self.cgroup_driver.open(container.record.cgroup_path).delete()

    def share_cgroup(self, container: Container) -> cgroups.Cgroup:
        """virtiofsd runs beside the VM's cgroup, not in it: its memory is not the guest's."""
        return self.cgroup_driver.create(f"{container.record.cgroup_path}-fs")

    async def stop_share_daemons(self, container: Container) -> None:
        """virtiofsd ends with its QEMU connection; stop any left and remove their cgroup."""
        daemons, container.share_daemons = container.share_daemons, None
        if daemons is not None:
            await daemons.stop()
        fs_cgroup = f"{container.record.cgroup_path}-fs"
        with best_effort(log, f"removing the virtiofsd cgroup {fs_cgroup}"):
            if self.cgroup_driver.exists(fs_cgroup):
                self.cgroup_driver.open(fs_cgroup).delete()

    # -- the VM's life ----------------------------------------------------------------------------------
    def attach(
        self, container: Container, vm: VM, log_writer: CRILogWriter | None, cgroup: cgroups.Cgroup | None
    ) -> None:
        container.vm = vm
        container.cgroup = cgroup
        container.log_writer = log_writer
        vm.on_exit(lambda _vm: self._on_exit(container))

    def record_exit(self, container: Container) -> None:
        """The container's VM has exited: its status says so, and STOPPED is announced (once, whichever
        of StopContainer, the exit watcher or recovery sees the exit first)."""
        if container.sync_from_vm():
            self.registry.container_event(EventType.STOPPED, container)

    def _on_exit(self, container: Container) -> None:
        self.record_exit(container)
        telemetry.VM_EXITS.labels(container.status.reason or "unknown").inc()
        if container.log_writer is not None:
            container.log_writer.close()
            container.log_writer = None
        if container.share_daemons is not None:
            self.background(self.stop_share_daemons(container), f"virtiofsd stop of {container.id[:12]}")
        log.info(
            "container %s exited: %s %s", container.id[:12], container.status.exit_code, container.status.reason
        )

    async def pin(self, container: Container) -> None:
        await live_resources.pin(container)

    def time_boot(self, container: Container, vm: VM, started: float) -> None:
        self.background(self._time_boot(vm, started), f"boot timer of {container.id[:12]}")

    async def _time_boot(self, vm: VM, started: float) -> None:
        """The boot time of a guest that says it is ready on its console (qmprt's marker)."""
        with contextlib.suppress(asyncio.TimeoutError, FailedPrecondition):
            await vm.wait_for_console(READY_MARKER, BOOT_TIMER_SECONDS)
            telemetry.VM_BOOT_SECONDS.observe(time.monotonic() - started)

    def background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``work`` as a task kept referenced until it ends; its failure is logged."""
        task = asyncio.get_running_loop().create_task(work, name=what)
        self.tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self.tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("%s failed: %s", what, finished.exception())

        task.add_done_callback(done)

    def cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()
