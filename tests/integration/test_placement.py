"""The placement the systemd units and the DaemonSet rely on for VMs to outlive qmprt.

``qmprt serve`` runs inside a cgroup that stands for its unit's (``qmprt.service``) or its container's
(the DaemonSet pod's). A VM pod's QEMU must be in none of that cgroup, in every hierarchy, and in a
session of its own; then everything in the unit's cgroup is SIGKILLed at once (what systemd's
KillMode=control-group, or a container runtime stopping the container, does), the QEMU must live on,
and a new qmprt started in the cgroup again must re-adopt it: listed RUNNING, exec answered.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import grpc
import psutil
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from qmprt import cgroups

from .conftest import TEST_CGROUP_ROOT
from .guests import TinyGuest
from .serverproc import ServerProcess, served

IMAGE_NAME = "images.qmprt.test/tiny:1"


def cgroup_paths(pid: int) -> list[str]:
    """The cgroup of ``pid`` in each hierarchy (``/proc/PID/cgroup``), named hierarchies included."""
    return [line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]


def run_vm_pod(stub: object, log_dir: Path) -> tuple[str, str]:
    log_dir.mkdir(exist_ok=True)
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="placed", uid=secrets.token_hex(6), namespace="placement"),
        log_directory=str(log_dir),
    )
    pod_id = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id  # type: ignore[attr-defined]
    container_id = stub.CreateContainer(cri.CreateContainerRequest(  # type: ignore[attr-defined]
        pod_sandbox_id=pod_id, sandbox_config=config,
        config=cri.ContainerConfig(metadata=cri.ContainerMetadata(name="vm"), image=cri.ImageSpec(image=IMAGE_NAME), log_path="vm.log"),
    ), timeout=60).container_id
    stub.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=60)  # type: ignore[attr-defined]
    return pod_id, container_id


def exec_hostname(stub: object, container_id: str, timeout: float = 120) -> bytes:
    """ExecSync of ``hostname``, retried while the guest boots (its helper or agent not up yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = stub.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=["hostname"], timeout=20), timeout=40)  # type: ignore[attr-defined]
            if answer.exit_code == 0:
                return bytes(answer.stdout).strip()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"exec into {container_id[:12]} did not succeed within {timeout} s")
        time.sleep(1)


def qemu_of(server: ServerProcess) -> psutil.Process:
    found = server.qemu_processes()
    assert len(found) == 1, found
    return found[0]


def test_a_vm_outlives_everything_in_qmprts_own_cgroup(
    tiny: TinyGuest, cgroup_driver: cgroups.CgroupDriver, tmp_path: Path
) -> None:
    unit = cgroup_driver.create(f"{TEST_CGROUP_ROOT}/placement-unit")
    try:
        with served(tmp_path, tiny, f"{TEST_CGROUP_ROOT}/placement-vms", IMAGE_NAME) as server:
            # served() started one qmprt outside; from here on qmprt runs in the "unit" cgroup.
            server.stop()
            server.exec_prefix = unit.exec_prefix()
            server.start()
            assert server.process is not None and server.process.pid in unit.pids()
            with grpc.insecure_channel(server.address) as channel:
                stub = api_pb2_grpc.RuntimeServiceStub(channel)
                api_pb2_grpc.ImageServiceStub(channel).PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE_NAME)), timeout=120)
                pod_id, container_id = run_vm_pod(stub, tmp_path / "logs")
                assert exec_hostname(stub, container_id) == b"placed"
            qemu = qemu_of(server)
            unit_path = unit.path.rstrip("/")
            for path in cgroup_paths(qemu.pid):
                assert not (path == unit_path or path.startswith(unit_path + "/")), (path, unit_path)
            assert f"/{TEST_CGROUP_ROOT}/placement-vms/" in "\n".join(cgroup_paths(qemu.pid))
            assert os.getsid(qemu.pid) != os.getsid(server.process.pid)
            assert os.getsid(qemu.pid) == qemu.pid  # a session (and process group) of its own
            assert qemu.pid not in unit.pids()

            # What systemd's control-group kill, or a container runtime's stop, does to the unit.
            unit.kill()
            server.process.wait(30)
            server.process = None
            assert not unit.pids()
            time.sleep(1)
            assert qemu.is_running() and qemu.status() != psutil.STATUS_ZOMBIE

            server.start()  # in the unit's cgroup again (exec_prefix)
            with grpc.insecure_channel(server.address) as channel:
                stub = api_pb2_grpc.RuntimeServiceStub(channel)
                listed = stub.ListContainers(cri.ListContainersRequest(), timeout=30).containers
                assert [(c.id, c.state) for c in listed] == [(container_id, cri.CONTAINER_RUNNING)]
                assert exec_hostname(stub, container_id, timeout=60) == b"placed"
                assert qemu_of(server).pid == qemu.pid  # the same QEMU, re-adopted
                stub.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
                stub.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    finally:
        if unit.pids():
            unit.kill()
        unit.delete()

