"""``qmprt serve`` as kubelet sees it: a real server process, a real gRPC client on its unix socket,
the real Runtime booting the tiny guest.

One server (restarted in the middle of the lifecycle test) serves the whole module, and one sandbox
carries several checks, because the machine is small and shared: the module boots three VMs in all
(the lifecycle, a guest that powers itself off, a QEMU that gets killed).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt import cgroups

from .conftest import TEST_CGROUP_ROOT
from .guests import ROOT, TinyGuest
from .serverproc import ServerProcess, served

BOOT_TIMEOUT = 120
IMAGE_NAME = "images.qmprt.test/tiny:1"
LABELS = {
    "io.kubernetes.pod.name": "web-0",
    "io.kubernetes.pod.namespace": "default",
    "example.com/ünïcode": "värde ✓ 日本",
    "spaces": "  a  b  ",
    "empty": "",
}


@pytest.fixture(scope="module")
def server(
    tiny: TinyGuest, cgroup_driver: cgroups.CgroupDriver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with served(tmp_path_factory.mktemp("cri"), tiny, f"{TEST_CGROUP_ROOT}/cri", IMAGE_NAME) as server:
        yield server


@dataclass
class Client:
    runtime: Any
    images: Any


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    channel = aio.insecure_channel(server.address)
    yield Client(api_pb2_grpc.RuntimeServiceStub(channel), api_pb2_grpc.ImageServiceStub(channel))
    await channel.close()


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def pod_config(log_dir: Path, name: str) -> cri.PodSandboxConfig:
    log_dir.mkdir(parents=True, exist_ok=True)  # kubelet's part
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=secrets.token_hex(8), namespace="default"),
        hostname=name,
        log_directory=str(log_dir),
        labels=LABELS,
        annotations={"note": "üñí ✓", "kubernetes.io/config.source": "api"},
    )


def container_config(name: str, log_dir: Path, command: list[str] | None = None) -> cri.ContainerConfig:
    (log_dir / name).mkdir(parents=True, exist_ok=True)  # kubelet's part
    return cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=name),
        image=cri.ImageSpec(image=IMAGE_NAME),
        command=command or [],
        log_path=f"{name}/0.log",
        labels={"tier": "front", "ключ": "значение"},
    )


async def status(client: Client, container_id: str) -> cri.ContainerStatus:
    response = await client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id))
    return response.status


async def wait_for_log(path: str, text: str, timeout: float = BOOT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and text in Path(path).read_text(errors="replace"):
            return
        await asyncio.sleep(0.2)
    content = Path(path).read_text(errors="replace")[-2000:] if os.path.exists(path) else "(no file)"
    raise AssertionError(f"{text!r} not in {path} after {timeout} s; it ends with:\n{content}")


async def wait_for_state(client: Client, container_id: str, state: int, timeout: float) -> cri.ContainerStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = await status(client, container_id)
        if current.state == state:
            return current
        await asyncio.sleep(0.2)
    raise AssertionError(f"container {container_id[:12]} is {current.state}, not {state}, after {timeout} s")


async def pull(client: Client) -> str:
    response = await client.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE_NAME)))
    return str(response.image_ref)


async def test_runtime_answers_what_kubelet_checks(client: Client, server: ServerProcess) -> None:
    version = await client.runtime.Version(cri.VersionRequest(version="v1"))
    assert (version.version, version.runtime_name, version.runtime_api_version) == ("0.1.0", "qmprt", "v1")
    conditions = {c.type: c for c in (await client.runtime.Status(cri.StatusRequest())).status.conditions}
    assert conditions["RuntimeReady"].status
    assert not conditions["NetworkReady"].status and conditions["NetworkReady"].reason == "NetworkPluginNotReady"
    runtime_config = await client.runtime.RuntimeConfig(cri.RuntimeConfigRequest())
    assert runtime_config.linux.cgroup_driver == cri.CGROUPFS
    assert (Path(server.socket).stat().st_mode & 0o777) == 0o660


async def test_full_lifecycle_with_a_restart_in_the_middle(
    client: Client, server: ServerProcess, tiny: TinyGuest, tmp_path: Path
) -> None:
    digest = await pull(client)
    assert digest.startswith("sha256:")
    image = (await client.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=IMAGE_NAME)))).image
    assert image.id == digest and IMAGE_NAME in image.repo_tags and image.size > 0
    unknown = await client.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image="no.such/image:1")))
    assert not unknown.HasField("image")
    fs_info = await client.images.ImageFsInfo(cri.ImageFsInfoRequest())
    [image_fs] = fs_info.image_filesystems
    assert os.path.isdir(image_fs.fs_id.mountpoint) and image_fs.used_bytes.value > 0 and image_fs.timestamp
    assert fs_info.container_filesystems

    config = pod_config(tmp_path / "logs", "life")
    pod_id = (
        await client.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config, runtime_handler="qmprt"))
    ).pod_sandbox_id
    pod = (await client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))).status
    assert pod.state == cri.SANDBOX_READY and pod.runtime_handler == "qmprt"
    assert pod.metadata == config.metadata and dict(pod.labels) == LABELS
    assert dict(pod.annotations) == dict(config.annotations)

    request = cri.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=container_config("vm", tmp_path / "logs"), sandbox_config=config
    )
    container_id = (await client.runtime.CreateContainer(request)).container_id
    created = await status(client, container_id)
    assert created.state == cri.CONTAINER_CREATED and created.created_at > 10**18
    assert created.log_path == str(tmp_path / "logs" / "vm" / "0.log")
    assert created.image.image == IMAGE_NAME and created.image_ref == digest

    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
    running = await status(client, container_id)
    assert running.state == cri.CONTAINER_RUNNING and running.started_at >= running.created_at
    await wait_for_log(running.log_path, tiny.ready_marker)

    uname = await client.runtime.ExecSync(
        cri.ExecSyncRequest(container_id=container_id, cmd=["uname", "-r"], timeout=60)
    )
    assert (uname.exit_code, uname.stdout.decode().strip()) == (0, tiny.kernel_version)
    failing = await client.runtime.ExecSync(
        cri.ExecSyncRequest(container_id=container_id, cmd=["sh", "-c", "echo err >&2; exit 3"], timeout=60)
    )
    assert (failing.exit_code, failing.stderr) == (3, b"err\n")

    stats = (await client.runtime.ContainerStats(cri.ContainerStatsRequest(container_id=container_id))).stats
    assert stats.cpu.usage_core_nano_seconds.value > 0 and stats.memory.working_set_bytes.value > 0
    assert stats.writable_layer.used_bytes.value > 0 and stats.cpu.timestamp > 10**18
    pod_stats = (await client.runtime.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=pod_id))).stats
    assert [c.attributes.id for c in pod_stats.linux.containers] == [container_id]
    in_use = await code_of(client.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=IMAGE_NAME))))
    assert in_use == grpc.StatusCode.FAILED_PRECONDITION

    # qmprt serve goes away (SIGTERM) and comes back: the VM keeps running, nothing is lost.
    qemu_before = [p.pid for p in server.qemu_processes()]
    assert server.stop() == 0, server.tail()
    assert not server.socket.exists()
    assert [p.pid for p in server.qemu_processes()] == qemu_before, "the VM survives qmprt's restart"
    server.start()
    after = await status(client, container_id)
    assert after.state == cri.CONTAINER_RUNNING
    assert (after.created_at, after.started_at) == (running.created_at, running.started_at)
    pod_after = (await client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))).status
    assert pod_after == pod
    echo = ["sh", "-c", "echo after-restart > /dev/ttyS0"]
    await client.runtime.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=echo, timeout=60))
    await wait_for_log(after.log_path, "after-restart", 30)

    # kubelet's rotation: rename the file, ReopenContainerLog creates the new one before it returns.
    os.rename(after.log_path, after.log_path + ".1")
    await client.runtime.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id=container_id))
    assert os.path.exists(after.log_path)
    echo = ["sh", "-c", "echo after-rotation > /dev/ttyS0"]
    await client.runtime.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=echo, timeout=60))
    await wait_for_log(after.log_path, "after-rotation", 30)

    await client.runtime.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=30), timeout=150)
    stopped = await status(client, container_id)
    assert (stopped.state, stopped.exit_code, stopped.reason) == (cri.CONTAINER_EXITED, 0, "Completed")
    assert stopped.finished_at >= stopped.started_at
    assert not server.qemu_processes()

    # Idempotence, then NOT_FOUND.
    await client.runtime.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=0))
    for _ in range(2):
        await client.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))
    assert await code_of(client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id))) == (
        grpc.StatusCode.NOT_FOUND
    )
    for _ in range(2):
        await client.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    stopped_pod = (await client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))).status
    assert stopped_pod.state == cri.SANDBOX_NOTREADY
    for _ in range(2):
        await client.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert await code_of(client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))) == (
        grpc.StatusCode.NOT_FOUND
    )
    for _ in range(2):
        await client.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=IMAGE_NAME)))
    gone = await client.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=IMAGE_NAME)))
    assert not gone.HasField("image")
    assert list((server.state_dir / "pods").iterdir()) == []


async def test_exit_reasons(client: Client, server: ServerProcess, tiny: TinyGuest, tmp_path: Path) -> None:
    await pull(client)
    config = pod_config(tmp_path / "logs", "exits")
    pod_id = (await client.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config))).pod_sandbox_id

    # The guest powers itself off: exit 0, Completed.
    bye = container_config("bye", tmp_path / "logs", ["/bin/sh", "-c", "echo qmprt-bye; poweroff"])
    bye_id = (
        await client.runtime.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=bye))
    ).container_id
    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=bye_id))
    exited = await wait_for_state(client, bye_id, cri.CONTAINER_EXITED, BOOT_TIMEOUT)
    assert (exited.exit_code, exited.reason) == (0, "Completed")
    assert "qmprt-bye" in Path(exited.log_path).read_text(errors="replace")
    await client.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=bye_id))

    # QEMU is killed: Error, with a message.
    doomed = container_config("doomed", tmp_path / "logs")
    doomed_id = (
        await client.runtime.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=doomed))
    ).container_id
    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=doomed_id))
    running = await status(client, doomed_id)
    await wait_for_log(running.log_path, tiny.ready_marker)
    [qemu] = server.qemu_processes()
    qemu.kill()
    killed = await wait_for_state(client, doomed_id, cri.CONTAINER_EXITED, 30)
    assert killed.reason == "Error" and killed.exit_code != 0 and killed.message
    await client.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


async def test_malformed_requests_get_their_code_and_leave_nothing(
    client: Client, server: ServerProcess, tmp_path: Path
) -> None:
    await pull(client)
    no_metadata = cri.RunPodSandboxRequest(config=cri.PodSandboxConfig(log_directory=str(tmp_path)))
    assert await code_of(client.runtime.RunPodSandbox(no_metadata)) == grpc.StatusCode.INVALID_ARGUMENT
    bad_handler = cri.RunPodSandboxRequest(config=pod_config(tmp_path / "l", "x"), runtime_handler="runc")
    assert await code_of(client.runtime.RunPodSandbox(bad_handler)) == grpc.StatusCode.INVALID_ARGUMENT
    host_network = pod_config(tmp_path / "l", "hostnet")
    host_network.linux.security_context.namespace_options.network = cri.NODE
    bad_hostname = pod_config(tmp_path / "l", "badhost")
    bad_hostname.hostname = "not_a_hostname"
    for refused in (host_network, bad_hostname):
        request = cri.RunPodSandboxRequest(config=refused)
        assert await code_of(client.runtime.RunPodSandbox(request)) == grpc.StatusCode.INVALID_ARGUMENT
    assert not (await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest())).items

    unknown_pod = cri.CreateContainerRequest(
        pod_sandbox_id="feedface", config=container_config("c", tmp_path / "logs")
    )
    assert await code_of(client.runtime.CreateContainer(unknown_pod)) == grpc.StatusCode.NOT_FOUND

    config = pod_config(tmp_path / "logs", "bad")
    pod_id = (await client.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config))).pod_sandbox_id
    first = cri.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=container_config("first", tmp_path / "logs")
    )
    first_id = (await client.runtime.CreateContainer(first)).container_id

    def request(name: str, **changes: Any) -> cri.CreateContainerRequest:
        container = container_config(name, tmp_path / "logs")
        for key, value in changes.items():
            if hasattr(value, "DESCRIPTOR"):
                getattr(container, key).CopyFrom(value)
            elif isinstance(value, list):
                getattr(container, key).extend(value)
            else:
                setattr(container, key, value)
        return cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=container)

    absurd = cri.LinuxContainerConfig(resources=cri.LinuxContainerResources(memory_limit_in_bytes=1 << 60))
    cases = [
        (request("logs", log_path="../../escape.log"), grpc.StatusCode.INVALID_ARGUMENT),
        (request("logs", log_path="/abs.log"), grpc.StatusCode.INVALID_ARGUMENT),
        (request("noimage", image=cri.ImageSpec()), grpc.StatusCode.INVALID_ARGUMENT),
        (
            request("imagevolume", mounts=[cri.Mount(container_path="/data", image=cri.ImageSpec(image=IMAGE_NAME))]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            request("readonlyroot", linux=cri.LinuxContainerConfig(
                security_context=cri.LinuxContainerSecurityContext(readonly_rootfs=True)
            )),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for bad, expected in cases:
        assert await code_of(client.runtime.CreateContainer(bad)) == expected, bad.config.metadata.name
    await client.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=first_id))
    unpulled = request("unpulled", image=cri.ImageSpec(image="no.such/image:1"))
    assert await code_of(client.runtime.CreateContainer(unpulled)) == grpc.StatusCode.NOT_FOUND
    absurd_code = await code_of(client.runtime.CreateContainer(request("absurd", linux=absurd)))
    assert absurd_code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)

    listed = (await client.runtime.ListContainers(cri.ListContainersRequest())).containers
    assert not listed
    assert sorted(p.name for p in (server.state_dir / "pods" / pod_id).iterdir()) == ["sandbox.json", "status.json"]
    await client.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


async def test_unknown_ids(client: Client) -> None:
    unknown = "0123456789abcdef" * 4
    for call in (
        client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=unknown)),
        client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=unknown)),
        client.runtime.StartContainer(cri.StartContainerRequest(container_id=unknown)),
        client.runtime.ExecSync(cri.ExecSyncRequest(container_id=unknown, cmd=["true"])),
    ):
        assert await code_of(call) == grpc.StatusCode.NOT_FOUND
    for call in (
        client.runtime.StopContainer(cri.StopContainerRequest(container_id=unknown)),
        client.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=unknown)),
        client.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=unknown)),
        client.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=unknown)),
        client.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image="no.such/image:1"))),
    ):
        assert await code_of(call) == grpc.StatusCode.OK


def test_a_second_server_on_the_same_socket_is_refused(server: ServerProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qmprt.cli", "serve", "--config", str(server.config), "--state-dir", "/tmp/unused"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "another qmprt" in result.stderr
    assert server.socket.exists()


def test_qmprt_ctl_drives_a_pod(server: ServerProcess, tiny: TinyGuest, tmp_path: Path) -> None:
    """The ctl twin of the fake-based ctl tests: crictl-style files, real guest, exit codes."""
    (tmp_path / "logs" / "vm").mkdir(parents=True)
    (tmp_path / "pod.yaml").write_text(
        "metadata: {name: ctl-demo, namespace: default, uid: u-ctl}\n"
        f"log_directory: {tmp_path / 'logs'}\nlinux: {{}}\n"
    )
    (tmp_path / "ctr.json").write_text(
        '{"metadata": {"name": "vm"}, "image": {"image": "%s"}, "log_path": "vm/0.log",'
        ' "command": ["/bin/sh", "-c", "echo hello from ctl"]}' % IMAGE_NAME
    )

    def ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "qmprt.cli", "ctl", "-r", str(server.socket), *args],
            cwd=tmp_path, capture_output=True, text=True, timeout=180,
        )
        if check:
            assert result.returncode == 0, f"ctl {' '.join(args)}: {result.stderr}"
        return result

    assert "Image is up to date for sha256:" in ctl("pull", IMAGE_NAME).stdout
    pod_id = ctl("runp", "pod.yaml").stdout.strip()
    container_id = ctl("create", pod_id[:12], "ctr.json", "pod.yaml").stdout.strip()
    ctl("start", container_id)
    deadline = time.monotonic() + BOOT_TIMEOUT
    while tiny.ready_marker not in ctl("logs", container_id).stdout:
        assert time.monotonic() < deadline, "the ready marker never showed in ctl logs"
        time.sleep(0.5)
    assert ctl("exec", container_id, "uname", "-r").stdout.strip() == tiny.kernel_version
    assert ctl("exec", container_id, "sh", "-c", "exit 5", check=False).returncode == 5
    [row] = ctl("ps").stdout.splitlines()[1:]
    assert row.split()[:2] == [container_id[:13], IMAGE_NAME] and "RUNNING" in row and row.endswith("ctl-demo")
    assert json.loads(ctl("inspect", container_id).stdout)["status"]["state"] == "CONTAINER_RUNNING"
    assert container_id[:13] in ctl("stats").stdout
    ctl("stop", "-t", "30", container_id)
    assert "EXITED" in ctl("ps", "-a").stdout
    assert "hello from ctl" in ctl("logs", container_id).stdout
    ctl("rm", container_id)
    ctl("rmp", pod_id)
    assert ctl("pods", "-q").stdout == ""
    ctl("rmi", IMAGE_NAME)


def test_prometheus_endpoint_counts_what_the_module_did(server: ServerProcess) -> None:
    """Last in the module: the VMs above started, exited and were asked about through the CRI."""
    text = server.metrics()
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")
    }
    assert samples['qmprt_vm_starts_total{result="ok"}'] >= 2
    assert samples['qmprt_cri_request_duration_seconds_count{code="OK",method="StartContainer"}'] >= 2
    assert samples['qmprt_cri_request_duration_seconds_count{code="INVALID_ARGUMENT",method="CreateContainer"}'] >= 1
    assert samples['qmprt_vm_exits_total{reason="Error"}'] >= 1, "the killed QEMU"
    assert samples['qmprt_image_pulls_total{result="ok"}'] >= 1
    assert samples["qmprt_vms_running"] == 0
    assert samples["qmprt_vm_boot_duration_seconds_count"] >= 1
    assert 'qmprt_recovered_containers_total{outcome="adopted"}' in samples, "the restart in the lifecycle test"
