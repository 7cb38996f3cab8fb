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
- What recovery changes (a container found exited) is announced on the registry's event bus like
  any other change; nobody has subscribed yet (the CRI socket opens after recovery), so kubelet
  learns it from the relist it does when its event stream reconnects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from qmprt import state, telemetry
from qmprt.cgroups import Cgroup
from qmprt.errors import QmprtError, best_effort
from qmprt.net import netns
from qmprt.pod.events import EventType
from qmprt.pod.network import PodNetworks
from qmprt.pod.records import CONTAINER_FILE, SANDBOX_FILE
from qmprt.pod.live import Container, Sandbox
from qmprt.pod.registry import Registry
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.pod.storage import ShareDaemons
from qmprt.pod.vms import ContainerVMs
from qmprt.vm.console import CRILogWriter
from qmprt.vm.config import VMState
from qmprt.vm.files import remove_state_files
from qmprt.vm.machine import VM
from qmprt.vm.status import started_for_sure

log = logging.getLogger(__name__)


@dataclass
class Recovery:
    """What recovery works with: where the records are, and what it hands adopted objects to."""

    state_root: Path
    registry: Registry
    vms: ContainerVMs
    networks: PodNetworks
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def pods_root(self) -> Path:
        return self.state_root / "pods"


async def recover(state_root: Path, registry: Registry, vms: ContainerVMs, networks: PodNetworks) -> Counter[str]:
    """Register every sandbox and container under ``state_root/pods``; the outcomes, counted."""
    work = Recovery(state_root, registry, vms, networks)
    for directory in sorted(work.pods_root.iterdir()):
        if directory.is_dir():
            await _recover_sandbox(work, directory)
    counts = work.counts
    log.info(
        "recovered %d sandboxes, %d containers: %d VMs adopted, %d found exited, %d half-created removed",
        len(registry.sandboxes), len(registry.containers), counts["adopted"], counts["exited"],
        counts["half-created-removed"],
    )
    if counts["quarantined"]:
        log.error("%d unreadable records were moved to %s", counts["quarantined"], state_root / QUARANTINE_DIR)
    for outcome in ("adopted", "exited", "half-created-removed", "quarantined"):
        telemetry.RECOVERIES.labels(outcome).inc(counts[outcome])
    return counts


async def _recover_sandbox(work: Recovery, directory: Path) -> None:
    state.remove_stale_temp_files(directory)
    if not (directory / SANDBOX_FILE).exists():
        log.warning("removing half-created sandbox %s", directory.name[:12])
        await _forget_network(work, directory.name)
        shutil.rmtree(directory, ignore_errors=True)
        work.counts["half-created-removed"] += 1
        return
    try:
        sandbox = Sandbox.load(directory)
    except _UNREADABLE as err:
        await _quarantine_sandbox(work, directory, err)
        work.counts["quarantined"] += 1
        return
    if sandbox.status.state == SandboxState.READY and not netns.exists(netns.netns_name(sandbox.id)):
        log.warning("sandbox %s lost its network namespace: NOTREADY", sandbox.id[:12])
        sandbox.set_state(SandboxState.NOTREADY)
    elif sandbox.status.state == SandboxState.READY and sandbox.network is not None:
        if await work.networks.readopt(sandbox.id, sandbox.spec, sandbox.network):
            # kubelet replaces a NOTREADY sandbox: the new one gets a working network.
            log.warning("sandbox %s lost its network wiring: NOTREADY", sandbox.id[:12])
            sandbox.set_state(SandboxState.NOTREADY)
    work.registry.add_sandbox(sandbox)
    for container_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        outcome = await _load_container(work, container_dir)
        work.counts[outcome] += 1


async def _load_container(work: Recovery, container_dir: Path) -> str:
    state.remove_stale_temp_files(container_dir)
    if not (container_dir / CONTAINER_FILE).exists():
        log.warning("removing half-created container %s", container_dir.name[:12])
        shutil.rmtree(container_dir, ignore_errors=True)
        return "half-created-removed"
    try:
        container = Container.load(container_dir)
    except _UNREADABLE as err:
        _quarantine_container(work, container_dir, err)
        return "quarantined"
    work.registry.add_container(container)
    return await _recover_container(work, container)


async def _forget_network(work: Recovery, sandbox_id: str) -> None:
    """CNI DEL from the cache (its IPAM addresses are released), then the namespace goes."""
    name = netns.netns_name(sandbox_id)
    with contextlib.suppress(QmprtError):
        await work.networks.forget_half_created(sandbox_id, str(netns.netns_path(name)))
    netns.remove(name)


QUARANTINE_DIR = "quarantine"
# A record that cannot be read: not JSON, or JSON without the fields its dataclass needs.
_UNREADABLE = (QmprtError, ValueError, KeyError, TypeError, AttributeError)


def _quarantine(work: Recovery, directory: Path, relative: str) -> Path:
    target = state.ensure_private_dir(work.state_root / QUARANTINE_DIR) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(directory, target)
    return target


async def _quarantine_sandbox(work: Recovery, directory: Path, err: BaseException) -> None:
    """A sandbox whose records cannot be read is unknown to kubelet's view: its VMs are stopped (found
    by their ``-name``), its namespace removed, its directory kept aside for a person to look at."""
    for container_dir in (p for p in directory.iterdir() if p.is_dir()):
        _kill_vm_named(container_dir.name)
    await _forget_network(work, directory.name)
    target = _quarantine(work, directory, directory.name)
    log.error("sandbox %s cannot be read (%s): moved to %s", directory.name[:12], err, target)


def _quarantine_container(work: Recovery, directory: Path, err: BaseException) -> None:
    _kill_vm_named(directory.name)
    target = _quarantine(work, directory, f"{directory.parent.name}/{directory.name}")
    log.error("container %s cannot be read (%s): its VM was stopped, moved to %s", directory.name[:12], err, target)


def _kill_vm_named(container_id: str) -> None:
    """SIGKILL the QEMU whose ``-name guest=`` is ``container_id`` (the same check adoption makes)."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if any(arg == f"guest={container_id}" or arg.startswith(f"guest={container_id},") for arg in cmdline):
            with contextlib.suppress(psutil.Error):
                process.kill()
                log.warning("stopped QEMU pid %d of unreadable container %s", process.pid, container_id[:12])


async def _undo_cut_start(work: Recovery, container: Container, cgroup: Cgroup | None) -> None:
    """A StartContainer cut before it recorded QEMU's pid: whatever it spawned is in the VM's cgroup
    (QEMU is exec'd straight into it), so kill that, remove what the start wrote, and leave the
    container CREATED: the retried StartContainer starts it afresh."""
    log.warning("container %s: its start was cut short; it stays created", container.id[:12])
    if cgroup is not None:
        with best_effort(log, f"removing the cgroup {cgroup.path} of a cut start"):
            cgroup.kill()
            cgroup.delete()
    await work.vms.stop_share_daemons(container)
    remove_state_files(container.directory)
    shutil.rmtree(work.vms.run_dir(container.id), ignore_errors=True)


async def _recover_container(work: Recovery, container: Container) -> str:
    status = container.status
    has_vm = (container.directory / "vm.json").exists()
    if status.state not in (ContainerState.RUNNING, ContainerState.CREATED) or not has_vm:
        if status.state == ContainerState.RUNNING:
            container.update(
                ContainerState.EXITED, finished_at_ns=time.time_ns(), exit_code=255, reason="Error",
                message="qmprt stopped while starting this container; its VM never ran",
            )
            work.registry.container_event(EventType.STOPPED, container)
            return "exited"
        return "unchanged"
    cgroup = work.vms.existing_cgroup(container)
    if status.state == ContainerState.CREATED and not started_for_sure(container.directory):
        await _undo_cut_start(work, container, cgroup)
        return "unchanged"
    if cgroup is None:
        log.warning(
            "container %s: its cgroup %s is gone; its VM is adopted without limits, stats or OOM count",
            container.id[:12], container.record.cgroup_path,
        )
    writer = _reopen_log(container)
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
    return await _take_over(work, container, vm, writer, cgroup)


def _reopen_log(container: Container) -> CRILogWriter | None:
    log_path = container.record.log_path
    if not log_path or not Path(log_path).parent.is_dir():
        return None
    try:
        return CRILogWriter(log_path)
    except OSError as err:  # a symlink or FIFO put at the log path while qmprt was down
        log.error("container %s: its log %s is not written: %s", container.id[:12], log_path, err)
        return None


async def _take_over(
    work: Recovery, container: Container, vm: VM, writer: CRILogWriter | None, cgroup: Cgroup | None
) -> str:
    """An adopted VM: attached to its container, whose state catches up with the VM's."""
    was_created = container.status.state == ContainerState.CREATED
    work.vms.attach(container, vm, writer, cgroup)
    container.share_daemons = ShareDaemons.adopt(container.directory)
    if vm.status.state == VMState.EXITED:
        await work.vms.stop_share_daemons(container)
        if was_created:
            container.update(ContainerState.RUNNING, started_at_ns=vm.status.started_at_ns)
        work.vms.record_exit(container)
        if writer is not None:
            writer.close()
            container.log_writer = None
        return "exited"
    if was_created:
        container.update(ContainerState.RUNNING, started_at_ns=vm.status.started_at_ns)
    try:
        await work.vms.pin(container)  # threads created while qmprt was away inherit any affinity
    except QmprtError as err:
        log.warning("container %s: re-pinning after adoption failed: %s", container.id[:12], err)
    return "adopted"
