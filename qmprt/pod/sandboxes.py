"""The life of sandboxes: run (directory, network namespace, CNI, records), stop, remove.

A sandbox is a directory, a network namespace and its CNI attachments; its containers' VMs join
that network. Stopping a sandbox stops its containers; removing it removes them. Its own events
carry its id as the container id (``qmprt.pod.events``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from qmprt import cgroups, state
from qmprt.config import Config
from qmprt.errors import InvalidArgument, NotFound, best_effort
from qmprt.net import netns
from qmprt.net.wiring import Mode
from qmprt.pod import planning
from qmprt.pod.annotations import network_wiring
from qmprt.pod.containers import FORCED_STOP_GRACE, Containers
from qmprt.pod.events import EventType
from qmprt.pod.specs import SandboxSpec, metadata_bytes
from qmprt.pod.network import PodNetworks
from qmprt.pod.live import Sandbox
from qmprt.pod.registry import Registry
from qmprt.pod.states import SandboxState
from qmprt.pod.records import SandboxStatus

log = logging.getLogger(__name__)


@dataclass
class Sandboxes:
    """Runs, stops and removes the sandboxes of ``registry``; ``containers`` ends theirs."""

    config: Config
    registry: Registry
    containers: Containers
    networks: PodNetworks
    cgroup_driver: cgroups.CgroupDriver
    pods_root: Path

    def check_spec(self, spec: SandboxSpec) -> Mode:
        """Refuse what this node cannot make of a well-formed spec (``qmprt.cri.convert`` checked its
        form); the network wiring the pod asks for."""
        handlers = ("", *self.config.runtime.handlers)
        if spec.runtime_handler not in handlers:
            raise InvalidArgument(
                f"unknown runtime handler {spec.runtime_handler!r}; this qmprt serves "
                f"{', '.join(repr(h) for h in handlers)}"
            )
        wiring_mode = network_wiring(spec.annotations, self.config.cni.wiring)
        if spec.cgroup_parent:
            planning.parent_path(spec.cgroup_parent, self.config)
        return wiring_mode

    async def run(self, spec: SandboxSpec) -> str:
        wiring_mode = self.check_spec(spec)
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
        # No pause process to start in between: the sandbox is made and running in one step.
        self.registry.sandbox_event(EventType.CREATED, sandbox)
        self.registry.sandbox_event(EventType.STARTED, sandbox)
        log.info("sandbox %s ready (%s/%s)", sandbox_id[:12], spec.metadata.namespace, spec.metadata.name)
        return sandbox_id

    async def stop(self, sandbox_id: str) -> None:
        try:
            sandbox = self.registry.sandbox(sandbox_id)
        except NotFound:
            return
        async with sandbox.lock:
            for container in self.registry.containers_of(sandbox.id):
                await self.containers.stop(container, FORCED_STOP_GRACE)
            # A failed CNI DEL raises before the namespace goes: kubelet retries StopPodSandbox.
            await self.networks.teardown(sandbox.id, sandbox.directory, sandbox.network)
            sandbox.network = None
            await asyncio.to_thread(netns.remove, netns.netns_name(sandbox.id))
            if sandbox.status.state != SandboxState.NOTREADY:
                sandbox.set_state(SandboxState.NOTREADY)
                self.registry.sandbox_event(EventType.STOPPED, sandbox)

    async def remove(self, sandbox_id: str) -> None:
        try:
            sandbox = self.registry.sandbox(sandbox_id)
        except NotFound:
            return
        await self.stop(sandbox.id)
        async with sandbox.lock:
            for container in self.registry.containers_of(sandbox.id):
                await self.containers.remove(container)
            self._delete_cgroup(sandbox)
            await asyncio.to_thread(shutil.rmtree, sandbox.directory, True)
            if self.registry.forget_sandbox(sandbox):
                self.registry.sandbox_event(EventType.DELETED, sandbox)
        log.info("sandbox %s removed", sandbox.id[:12])

    def _delete_cgroup(self, sandbox: Sandbox) -> None:
        if sandbox.spec.cgroup_parent:
            return  # kubelet owns the pod's cgroup
        path = planning.sandbox_cgroup_path(sandbox.id, sandbox.spec, self.config)
        with best_effort(log, f"removing the cgroup {path} of sandbox {sandbox.id[:12]}"):
            if self.cgroup_driver.exists(path):
                self.cgroup_driver.open(path).delete()
        others = [s for s in self.registry.sandboxes.values() if s is not sandbox and not s.spec.cgroup_parent]
        if not others:
            # The runtime's own parent cgroup goes with its last sandbox, unless another qmprt uses it.
            root = self.config.cgroups.root
            with best_effort(log, f"removing the runtime's cgroup root {root}"):
                if self.cgroup_driver.exists(root):
                    self.cgroup_driver.open(root).delete_if_empty()
