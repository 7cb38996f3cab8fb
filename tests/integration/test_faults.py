"""Faults around a running VM pod, through the CRI socket: the guest agent falling silent, and the
node's disk filling up under qmprt's state directory (a small tmpfs mounted for this module).

The rule in each case: calls answer within their bound with a status a person can act on
(DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), the server keeps answering everyone else, the VM keeps
running, a refused call leaves nothing behind, and things work again once the fault is gone.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from qmprt.net import netns

from .conftest import TEST_CGROUP_ROOT
from .guests import TinyGuest
from .serverproc import ServerProcess, served
from .test_chaos_restart import IMAGE_NAME, container_config, pod_config

STATE_TMPFS_MIB = 64  # the tiny image (~28 MiB) and a pod's files fit; the filler takes the rest


@pytest.fixture(scope="module")
def server(tiny: TinyGuest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("faults")
    state = directory / "state"
    state.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={STATE_TMPFS_MIB}m,mode=0700", "tmpfs", str(state)], check=True)
    try:
        with served(directory, tiny, f"{TEST_CGROUP_ROOT}/faults", IMAGE_NAME, log_level="info") as the_server:
            with grpc.insecure_channel(the_server.address) as channel:
                api_pb2_grpc.ImageServiceStub(channel).PullImage(
                    cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE_NAME)), timeout=120
                )
            yield the_server
    finally:
        subprocess.run(["umount", str(state)], check=True)


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[Any]:
    with grpc.insecure_channel(server.address) as channel:
        yield api_pb2_grpc.RuntimeServiceStub(channel)


def exec_sync(stub: Any, container_id: str, cmd: list[str], timeout: int = 20) -> cri.ExecSyncResponse:
    return stub.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout), timeout=timeout + 30)


@contextlib.contextmanager
def running_pod(stub: Any, log_root: Path, name: str) -> Iterator[tuple[str, str]]:
    config = pod_config(log_root, name)
    pod_id = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    try:
        container_id = stub.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container_config(), sandbox_config=config), timeout=60).container_id
        stub.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=60)
        deadline = time.monotonic() + 120
        while True:
            try:
                exec_sync(stub, container_id, ["true"], 10)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield pod_id, container_id
    finally:
        stub.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        stub.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)


def test_a_silent_guest_agent_bounds_exec_and_stop(server: ServerProcess, stub: Any, tmp_path: Path) -> None:
    with running_pod(stub, tmp_path, "silent") as (_, container_id):
        # Freeze the guest's qemu-ga and exec helper (ExecSync's two ways in) for 8 s, a second after
        # this exec has returned.
        daemons = "$(cat /run/qemu-ga.pid) $(pidof qmprt-exec)"
        freeze = f"(sleep 1; kill -STOP {daemons}; sleep 8; kill -CONT {daemons})"
        exec_sync(stub, container_id, ["sh", "-c", f"{freeze} >/dev/null 2>&1 &"])
        frozen_at = time.monotonic() + 1
        time.sleep(1.5)
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            exec_sync(stub, container_id, ["echo", "lost"], 3)
        # The guest never took the command: "does not answer", not a command that ran too long.
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value
        assert "does not answer" in caught.value.details()
        assert time.monotonic() - began < 3 + 2.5
        # Everyone else is answered meanwhile.
        for _ in range(5):
            began = time.monotonic()
            status = stub.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id), timeout=5).status
            assert status.state == cri.CONTAINER_RUNNING
            stub.ListContainers(cri.ListContainersRequest(), timeout=5)
            assert time.monotonic() - began < 1
        # Once the agent answers again, the next exec gets its own answer (not a stale one).
        time.sleep(max(0.0, frozen_at + 8.5 - time.monotonic()))
        answered = exec_sync(stub, container_id, ["echo", "back"], 20)
        assert (answered.exit_code, answered.stdout) == (0, b"back\n")

        # Silent for good: StopContainer still ends within its timeout and a small bound.
        exec_sync(stub, container_id, ["sh", "-c", "(sleep 1; kill -STOP $(cat /run/qemu-ga.pid)) >/dev/null 2>&1 &"])
        time.sleep(1.5)
        began = time.monotonic()
        stub.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=5), timeout=60)
        assert time.monotonic() - began < 5 + 4
        status = stub.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id), timeout=5).status
        assert status.state == cri.CONTAINER_EXITED


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its filesystem refuses another byte."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 4096)
    return filler


def test_a_full_disk_is_resource_exhausted_and_leaves_nothing(server: ServerProcess, stub: Any, tmp_path: Path) -> None:
    with running_pod(stub, tmp_path, "anchor") as (_, anchor):
        other_config = pod_config(tmp_path, "other")
        other = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=other_config), timeout=60).pod_sandbox_id
        pods_before = sorted(path.name for path in (server.state_dir / "pods").iterdir())
        other_dir = server.state_dir / "pods" / other
        other_files = sorted(path.name for path in other_dir.iterdir())
        namespaces_before = set(netns.NETNS_DIR.iterdir())
        # The guest's boot-time writes reach its overlay first: a write that needs a new qcow2 cluster
        # while the host disk is full pauses the VM (QEMU's werror=enospc), which this test is not about.
        assert exec_sync(stub, anchor, ["sync"]).exit_code == 0
        filler = fill(server.state_dir)
        try:
            for attempt in range(3):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config(tmp_path, f"full{attempt}")), timeout=60)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
                assert "disk is full" in caught.value.details() or "No space left" in caught.value.details()
                with pytest.raises(grpc.RpcError) as caught:
                    stub.CreateContainer(cri.CreateContainerRequest(
                        pod_sandbox_id=other, config=container_config(), sandbox_config=other_config), timeout=60)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
            # Nothing half-made: no pod directory, no namespace, no container directory, no temp file.
            assert sorted(path.name for path in (server.state_dir / "pods").iterdir()) == pods_before
            assert sorted(path.name for path in other_dir.iterdir()) == other_files
            assert set(netns.NETNS_DIR.iterdir()) == namespaces_before
            assert not [path for path in server.state_dir.rglob("*.tmp")]
            # The running VM and the server carry on.
            assert exec_sync(stub, anchor, ["echo", "still"]).stdout == b"still\n"
            assert len(stub.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5).items) == 2
        finally:
            filler.unlink()
        # With space again, the same requests work.
        created = stub.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=other, config=container_config(), sandbox_config=other_config), timeout=60).container_id
        assert created
        stub.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=other), timeout=60)
        stub.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=other), timeout=60)
