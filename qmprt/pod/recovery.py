"""Recovery: a starting qmprt takes over everything an earlier one left, and drops nothing silently.

Assumptions:
- The state root is only written by one qmprt at a time (the server refuses to share a socket, and
  each instance has its own state root).
- Metadata files are written once, before anything else of the object exists; a directory without
  one is a creation that crashed half-way, and is deleted (with its network namespace).
- Status files are replaced atomically, so they are whole; they may lag reality by one step, which
  recovery repairs: a RUNNING container whose VM is gone is judged from the VM's recorded events and
  console; a CREATED container whose VM's pid was recorded (a crash between spawning QEMU and
  marking the container) is adopted as RUNNING; a CREATED container whose start was cut before the
  pid was recorded stays CREATED, with whatever that start spawned killed through the VM's cgroup
  (QEMU is exec'd straight into it) and its files removed, so the retried StartContainer works.
- A sandbox's ``network.json`` is written before its metadata, so a complete sandbox has it when it
  has a network; a half-created one gets a CNI DEL from the CNI cache (IPAM is released) before its
  namespace goes, which takes its taps and qdiscs along. The wiring of a ready sandbox is checked
  and its DHCP responders (which live in this process) are started again; a sandbox whose wiring is
  broken is NOTREADY, so kubelet replaces it (its VM cannot get the lost tap back).
- QEMU processes are identified by pid, start time and ``-name guest=<container id>``; a reused pid
  is never mistaken for a VM.
- A record that cannot be read (a corrupt or foreign file) does not stop the rest: its sandbox or
  container is moved to ``<state root>/quarantine/`` for a person to look at, the QEMU named after it
  is stopped (qmprt can no longer manage it) and the pod's namespace removed; kubelet, which no longer
  sees it, creates a new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from qmprt import state, telemetry
from qmprt.cgroups import Cgroup
from qmprt.errors import QmprtError, best_effort
from qmprt.net import netns
from qmprt.pod.records import CONTAINER_FILE, SANDBOX_FILE, Container, Sandbox
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.pod.storage import ShareDaemons
from qmprt.vm.console import CRILogWriter
from qmprt.vm.config import VMState
from qmprt.vm.files import remove_state_files
from qmprt.vm.machine import VM
from qmprt.vm.status import started_for_sure

if TYPE_CHECKING:
    from qmprt.pod.runtime import Runtime

log = logging.getLogger(__name__)


async def recover(runtime: Runtime) -> None:
    adopted = exited = removed = quarantined = 0
    for directory in sorted(runtime.pods_root.iterdir()):
        if not directory.is_dir():
            continue
        state.remove_stale_temp_files(directory)
        if not (directory / SANDBOX_FILE).exists():
            log.warning("removing half-created sandbox %s", directory.name[:12])
            name = netns.netns_name(directory.name)
            with contextlib.suppress(QmprtError):
                await runtime.networks.forget_half_created(directory.name, str(netns.netns_path(name)))
            netns.remove(name)
            shutil.rmtree(directory, ignore_errors=True)
            removed += 1
            continue
        try:
            sandbox = Sandbox.load(directory)
        except _UNREADABLE as err:
            await _quarantine_sandbox(runtime, directory, err)
            quarantined += 1
            continue
        if sandbox.status.state == SandboxState.READY and not netns.exists(netns.netns_name(sandbox.id)):
            log.warning("sandbox %s lost its network namespace: NOTREADY", sandbox.id[:12])
            sandbox.set_state(SandboxState.NOTREADY)
        elif sandbox.status.state == SandboxState.READY and sandbox.network is not None:
            if await runtime.networks.readopt(sandbox.id, sandbox.spec, sandbox.network):
                # kubelet replaces a NOTREADY sandbox: the new one gets a working network.
                log.warning("sandbox %s lost its network wiring: NOTREADY", sandbox.id[:12])
                sandbox.set_state(SandboxState.NOTREADY)
        runtime.register_sandbox(sandbox)
        for container_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
            state.remove_stale_temp_files(container_dir)
            if not (container_dir / CONTAINER_FILE).exists():
                log.warning("removing half-created container %s", container_dir.name[:12])
                shutil.rmtree(container_dir, ignore_errors=True)
                removed += 1
                continue
            try:
                container = Container.load(container_dir)
            except _UNREADABLE as err:
                _quarantine_container(runtime, container_dir, err)
                quarantined += 1
                continue
            runtime.register_container(container)
            outcome = await _recover_container(runtime, container)
            adopted += outcome == "adopted"
            exited += outcome == "exited"
    log.info(
        "recovered %d sandboxes, %d containers: %d VMs adopted, %d found exited, %d half-created removed",
        len(runtime.sandboxes), len(runtime.containers), adopted, exited, removed,
    )
    if quarantined:
        log.error("%d unreadable records were moved to %s", quarantined, runtime.state_root / QUARANTINE_DIR)
    outcomes = (("adopted", adopted), ("exited", exited), ("half-created-removed", removed), ("quarantined", quarantined))
    for outcome, count in outcomes:
        telemetry.RECOVERIES.labels(outcome).inc(count)


QUARANTINE_DIR = "quarantine"
# A record that cannot be read: not JSON, or JSON without the fields its dataclass needs.
_UNREADABLE = (QmprtError, ValueError, KeyError, TypeError, AttributeError)


def _quarantine(runtime: Runtime, directory: Path, relative: str) -> Path:
    target = state.ensure_private_dir(runtime.state_root / QUARANTINE_DIR) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(directory, target)
    return target


async def _quarantine_sandbox(runtime: Runtime, directory: Path, err: BaseException) -> None:
    """A sandbox whose records cannot be read is unknown to kubelet's view: its VMs are stopped (found
    by their ``-name``), its namespace removed, its directory kept aside for a person to look at."""
    for container_dir in (p for p in directory.iterdir() if p.is_dir()):
        _kill_vm_named(container_dir.name)
    name = netns.netns_name(directory.name)
    with contextlib.suppress(QmprtError):  # CNI DEL from the cache: its IPAM addresses are released
        await runtime.networks.forget_half_created(directory.name, str(netns.netns_path(name)))
    netns.remove(name)
    target = _quarantine(runtime, directory, directory.name)
    log.error("sandbox %s cannot be read (%s): moved to %s", directory.name[:12], err, target)


def _quarantine_container(runtime: Runtime, directory: Path, err: BaseException) -> None:
    _kill_vm_named(directory.name)
    target = _quarantine(runtime, directory, f"{directory.parent.name}/{directory.name}")
    log.error("container %s cannot be read (%s): its VM was stopped, moved to %s", directory.name[:12], err, target)


def _kill_vm_named(container_id: str) -> None:
    """SIGKILL the QEMU whose ``-name guest=`` is ``container_id`` (the same check adoption makes)."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if any(arg == f"guest={container_id}" or arg.startswith(f"guest={container_id},") for arg in cmdline):
            with contextlib.suppress(psutil.Error):
                process.kill()
                log.warning("stopped QEMU pid %d of unreadable container %s", process.pid, container_id[:12])


async def _undo_cut_start(runtime: Runtime, container: Container, cgroup: Cgroup | None) -> None:
    """A StartContainer cut before it recorded QEMU's pid: whatever it spawned is in the VM's cgroup
    (QEMU is exec'd straight into it), so kill that, remove what the start wrote, and leave the
    container CREATED: the retried StartContainer starts it afresh."""
    log.warning("container %s: its start was cut short; it stays created", container.id[:12])
    if cgroup is not None:
        with best_effort(log, f"removing the cgroup {cgroup.path} of a cut start"):
            cgroup.kill()
            cgroup.delete()
    await runtime.stop_share_daemons(container)
    remove_state_files(container.directory)
    shutil.rmtree(runtime.container_run_dir(container.id), ignore_errors=True)


async def _recover_container(runtime: Runtime, container: Container) -> str:
    status = container.status
    has_vm = (container.directory / "vm.json").exists()
    if status.state not in (ContainerState.RUNNING, ContainerState.CREATED) or not has_vm:
        if status.state == ContainerState.RUNNING:
            container.update(
                ContainerState.EXITED, finished_at_ns=time.time_ns(), exit_code=255, reason="Error",
                message="qmprt stopped while starting this container; its VM never ran",
            )
            return "exited"
        return "unchanged"
    cgroup = None
    with contextlib.suppress(QmprtError):
        if runtime.cgroup_driver.exists(container.record.cgroup_path):
            cgroup = runtime.cgroup_driver.open(container.record.cgroup_path)
    if status.state == ContainerState.CREATED and not started_for_sure(container.directory):
        await _undo_cut_start(runtime, container, cgroup)
        return "unchanged"
    writer = None
    log_path = container.record.log_path
    if log_path and Path(log_path).parent.is_dir():
        try:
            writer = CRILogWriter(log_path)
        except OSError as err:  # a symlink or FIFO put at the log path while qmprt was down
            log.error("container %s: its log %s is not written: %s", container.id[:12], log_path, err)
    try:
        vm = await VM.adopt(container.directory, cgroup=cgroup, log_writer=writer)
    except QmprtError as err:
        log.error("container %s: cannot adopt its VM: %s", container.id[:12], err)
        if writer is not None:
            writer.close()
        container.update(
            ContainerState.UNKNOWN if status.state == ContainerState.RUNNING else ContainerState.EXITED,
            message=f"qmprt could not re-adopt the VM after a restart: {err}",
        )
        return "exited"
    runtime.attach_vm(container, vm, writer, cgroup)
    container.share_daemons = ShareDaemons.adopt(container.directory)
    if vm.status.state == VMState.EXITED:
        await runtime.stop_share_daemons(container)
        if status.state == ContainerState.CREATED:
            container.update(ContainerState.RUNNING, started_at_ns=vm.status.started_at_ns)
        container.sync_from_vm()
        if writer is not None:
            writer.close()
            container.log_writer = None
        return "exited"
    if status.state == ContainerState.CREATED:
        container.update(ContainerState.RUNNING, started_at_ns=vm.status.started_at_ns)
    try:
        await runtime.pin(container)  # threads created while qmprt was away inherit any affinity
    except QmprtError as err:
        log.warning("container %s: re-pinning after adoption failed: %s", container.id[:12], err)
    return "adopted"
