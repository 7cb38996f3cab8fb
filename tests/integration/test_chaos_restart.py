"""Crash safety: ``qmprt serve`` SIGKILLed at random points of pod lifecycles, restarted on the same state.

An anchor VM pod runs throughout. Each iteration starts a pod's whole lifecycle (RunPodSandbox,
CreateContainer, StartContainer, ExecSync, StopContainer, RemoveContainer, StopPodSandbox,
RemovePodSandbox) in a client thread while ExecSyncs hit the anchor, and SIGKILLs the server after a
random delay, mid-call or between calls. After each restart: the anchor still runs and answers exec,
lists answer, and the interrupted pod is driven to removed by the idempotent calls kubelet would
retry. At the end everything is removed through the CRI, and nothing is left (QEMU, netns, state).
``--chaos-iterations`` sets the count (a short run by default; longer runs are for the benchmark machine).
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from qmprt.net import netns

from .conftest import TEST_CGROUP_ROOT
from .guests import TinyGuest
from .serverproc import served

IMAGE_NAME = "images.qmprt.test/tiny:1"
SEED = 1203


def pod_config(log_root: Path, name: str) -> cri.PodSandboxConfig:
    (log_root / name).mkdir(parents=True, exist_ok=True)
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=secrets.token_hex(6), namespace="chaos"),
        log_directory=str(log_root / name),
    )


def container_config() -> cri.ContainerConfig:
    return cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name="vm"), image=cri.ImageSpec(image=IMAGE_NAME), log_path="vm.log"
    )


def lifecycle(stub: Any, log_root: Path, name: str, done: list[str]) -> None:
    """One pod from nothing to removed; stops quietly at the first failed call (the server died)."""
    try:
        config = pod_config(log_root, name)
        pod_id = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
        done.append("runp")
        container_id = stub.CreateContainer(
            cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=container_config(), sandbox_config=config),
            timeout=60,
        ).container_id
        done.append("create")
        stub.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=60)
        done.append("start")
        stub.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=["true"], timeout=30), timeout=60)
        done.append("exec")
        stub.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=0), timeout=60)
        stub.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id), timeout=60)
        stub.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        stub.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        done.append("removed")
    except grpc.RpcError:
        pass


def exec_anchor(stub: Any, container_id: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            stub.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=["echo", "x"], timeout=10), timeout=20)
        except grpc.RpcError:
            return


def wait_for_exec(stub: Any, container_id: str, timeout: float = 60) -> cri.ExecSyncResponse:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return stub.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=["echo", "alive"], timeout=10),
                                 timeout=20)
        except grpc.RpcError as err:
            if time.monotonic() > deadline:
                raise AssertionError(f"the anchor VM does not answer exec after a restart: {err}") from err
            time.sleep(0.5)


def test_sigkill_at_random_points_loses_no_vm_and_leaves_nothing(
    tiny: TinyGuest, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, chaos_iterations: int
) -> None:
    rng = random.Random(SEED)
    log_root = tmp_path / "logs"
    with served(tmp_path_factory.mktemp("chaos"), tiny, f"{TEST_CGROUP_ROOT}/chaos", IMAGE_NAME, log_level="info") as server:
        channel = grpc.insecure_channel(server.address)
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        api_pb2_grpc.ImageServiceStub(channel).PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE_NAME)), timeout=120)
        anchor_config = pod_config(log_root, "anchor")
        anchor_pod = stub.RunPodSandbox(cri.RunPodSandboxRequest(config=anchor_config), timeout=60).pod_sandbox_id
        anchor = stub.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=anchor_pod, config=container_config(), sandbox_config=anchor_config), timeout=60).container_id
        stub.StartContainer(cri.StartContainerRequest(container_id=anchor), timeout=60)
        wait_for_exec(stub, anchor, 120)
        anchor_pid = server.qemu_processes()[0].pid
        cut: dict[str, int] = {}
        for iteration in range(chaos_iterations):
            done: list[str] = []
            stop = threading.Event()
            worker = threading.Thread(target=lifecycle, args=(stub, log_root, f"p{iteration}", done))
            execs = threading.Thread(target=exec_anchor, args=(stub, anchor, stop))
            worker.start()
            execs.start()
            # Half the kills land in the first RPCs (they take ~150 ms in all), the rest during the boot,
            # the exec and the teardown.
            time.sleep(rng.choice([rng.uniform(0, 0.25), rng.uniform(0, 0.25), rng.uniform(0.25, 3), rng.uniform(3, 6)]))
            assert server.process is not None
            server.process.kill()
            server.process.wait(30)
            server.process = None
            stop.set()
            worker.join(120)
            execs.join(60)
            key = done[-1] if done else "nothing"
            cut[key] = cut.get(key, 0) + 1
            server.start()
            channel.close()
            channel = grpc.insecure_channel(server.address)
            stub = api_pb2_grpc.RuntimeServiceStub(channel)
            # What kubelet sees after the restart: the anchor runs and answers, lists work.
            status = stub.ContainerStatus(cri.ContainerStatusRequest(container_id=anchor), timeout=30).status
            assert status.state == cri.CONTAINER_RUNNING, (iteration, done, status)
            # The first exec after the restart, not retried: an exec the kill cut (the anchor's, or
            # the pod's) may have left half a request in the agent's parser; the next session resyncs.
            first = stub.ExecSync(cri.ExecSyncRequest(container_id=anchor, cmd=["echo", "alive"], timeout=10), timeout=30)
            assert (first.exit_code, first.stdout) == (0, b"alive\n"), (iteration, done, first)
            # The interrupted pod: kubelet retries stop/remove, which are idempotent.
            for pod in stub.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=30).items:
                if pod.id == anchor_pod:
                    continue
                for container in stub.ListContainers(cri.ListContainersRequest(
                        filter=cri.ContainerFilter(pod_sandbox_id=pod.id)), timeout=30).containers:
                    assert container.state != cri.CONTAINER_UNKNOWN, (iteration, done, container)
                stub.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
                stub.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
            assert [p.id for p in stub.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=30).items] == [anchor_pod]
            assert [p.pid for p in server.qemu_processes()] == [anchor_pid], (iteration, done, "a stray QEMU")
        print("chaos: last step done before each kill:", cut)
        assert sum(cut.values()) == chaos_iterations
        channel.close()
    # served() removed the anchor through the CRI and checked no QEMU is left; the rest is state.
    assert not list((server.state_dir / "pods").iterdir())
    assert not any(netns.exists(netns.netns_name(pod_id)) for pod_id in (anchor_pod,))


def test_sigkill_during_pulls_leaves_no_partial_file(
    tiny: TinyGuest, tmp_path_factory: pytest.TempPathFactory, chaos_iterations: int
) -> None:
    """A pull cut by SIGKILL leaves no partial download after the restart, and pulling again works."""
    rng = random.Random(SEED + 1)
    with served(tmp_path_factory.mktemp("pullchaos"), tiny, f"{TEST_CGROUP_ROOT}/pullchaos", IMAGE_NAME,
                log_level="info") as server:
        for iteration in range(chaos_iterations):
            with grpc.insecure_channel(server.address) as channel:
                images = api_pb2_grpc.ImageServiceStub(channel)
                images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=IMAGE_NAME)), timeout=30)
                pulled: list[str] = []

                def pull() -> None:
                    try:
                        images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE_NAME)), timeout=60)
                        pulled.append("done")
                    except grpc.RpcError:
                        pass

                worker = threading.Thread(target=pull)
                worker.start()
                time.sleep(rng.uniform(0.0, 0.3))
                assert server.process is not None
                server.process.kill()
                server.process.wait(30)
                server.process = None
                worker.join(60)
            server.start()
            leftovers = list((server.state_dir / "images" / "tmp").iterdir())
            assert not leftovers, (iteration, pulled, leftovers)
            with grpc.insecure_channel(server.address) as channel:
                images = api_pb2_grpc.ImageServiceStub(channel)
                images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE_NAME)), timeout=60)
                status = images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=IMAGE_NAME)), timeout=30)
                assert status.image.id.startswith("sha256:") and IMAGE_NAME in status.image.repo_tags
