"""Streaming to a VM pod without a network, from a real ``qmprt serve`` (its streaming server on the
machine's loopback): PortForward goes through the exec helper in the guest, and an interactive
Attach (a container created with stdin and a tty) types into the serial console and sees the answer
while a second attacher and the CRI log see it too. One VM.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt import cgroups
from tests.spdy_client import SpdyClient

from .conftest import TEST_CGROUP_ROOT
from .guests import TinyGuest
from .serverproc import ServerProcess, served

IMAGE_NAME = "images.qmprt.test/tiny:1"
PORT = 8080


@pytest.fixture(scope="module")
def server(tiny: TinyGuest, cgroup_driver: cgroups.CgroupDriver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with served(tmp_path_factory.mktemp("nonet"), tiny, f"{TEST_CGROUP_ROOT}/nonet", IMAGE_NAME) as server:
        yield server


@pytest.fixture
async def pod(server: ServerProcess, tmp_path: Path) -> AsyncIterator[tuple[Any, str, str, Path]]:
    channel = aio.insecure_channel(server.address)
    runtime = api_pb2_grpc.RuntimeServiceStub(channel)
    images = api_pb2_grpc.ImageServiceStub(channel)
    await images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE_NAME)))
    (tmp_path / "vm").mkdir()
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="nonet", uid=secrets.token_hex(8), namespace="default"),
        log_directory=str(tmp_path),
    )
    sandbox_id = (await runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config))).pod_sandbox_id
    # The tiny guest has no shell on its console: the container's command reads it (attach's stdin).
    command = (
        f"mkdir -p /www && echo hello without a network > /www/index.html && httpd -p {PORT} -h /www && echo httpd-up"
        " && while read -r a b; do echo \"sum-$((a + b))-done\"; done < /dev/ttyS0"
    )
    container_id = (await runtime.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=sandbox_id, sandbox_config=config,
        config=cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="vm"), image=cri.ImageSpec(image=IMAGE_NAME),
            command=["/bin/sh", "-c", command], log_path="vm/0.log", stdin=True, tty=True,
        ),
    ))).container_id
    await runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
    log_path = tmp_path / "vm" / "0.log"
    for _ in range(600):
        if log_path.exists() and b"httpd-up" in log_path.read_bytes():
            break
        await asyncio.sleep(0.2)
    try:
        yield runtime, sandbox_id, container_id, log_path
    finally:
        await runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
        await runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
        await channel.close()


async def spdy(url: str, protocol: str) -> SpdyClient:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return await SpdyClient.connect(parts.hostname, parts.port, parts.path, protocols=(protocol,), flow_control=False)


async def read_until(stream: Any, needle: bytes, timeout: float = 30) -> bytes:
    seen = b""

    async def loop() -> bytes:
        nonlocal seen
        while needle not in seen:
            chunk = await stream.read()
            assert chunk, f"the stream ended before {needle!r}: {seen[-500:]!r}"
            seen += chunk
        return seen

    return await asyncio.wait_for(loop(), timeout)


async def test_port_forward_without_a_network_goes_through_the_helper(pod: tuple[Any, str, str, Path]) -> None:
    runtime, sandbox_id, _, _ = pod
    status = await runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id))
    assert status.status.network.ip == ""  # no CNI network here
    url = (await runtime.PortForward(cri.PortForwardRequest(pod_sandbox_id=sandbox_id, port=[PORT]))).url
    async with await spdy(url, "portforward.k8s.io") as client:
        error = await client.open_stream({"streamType": "error", "port": str(PORT), "requestID": "0"}, fin=True)
        data = await client.open_stream({"streamType": "data", "port": str(PORT), "requestID": "0"})
        await data.write(b"GET / HTTP/1.0\r\n\r\n")
        answer = await asyncio.wait_for(client.read_all(data), 30)
        assert await client.read_all(error) == b""
        # A port nobody listens on: the error stream says so.
        error = await client.open_stream({"streamType": "error", "port": "9", "requestID": "1"}, fin=True)
        await client.open_stream({"streamType": "data", "port": "9", "requestID": "1"})
        refused = await asyncio.wait_for(client.read_all(error), 30)
    assert b"hello without a network" in answer
    assert refused, "a refused connection must be reported on the error stream"


async def test_an_interactive_attach_types_into_the_console(pod: tuple[Any, str, str, Path]) -> None:
    runtime, _, container_id, log_path = pod
    typing_url = (await runtime.Attach(cri.AttachRequest(container_id=container_id, stdin=True, tty=True, stdout=True))).url
    watching_url = (await runtime.Attach(cri.AttachRequest(container_id=container_id, tty=True, stdout=True))).url
    typing = await spdy(typing_url, "v4.channel.k8s.io")
    watching = await spdy(watching_url, "v4.channel.k8s.io")
    try:
        streams = {}
        for name, client, with_stdin in (("typing", typing, True), ("watching", watching, False)):
            await client.open_stream({"streamType": "error"}, fin=True)
            stdin = await client.open_stream({"streamType": "stdin"}) if with_stdin else None
            stdout = await client.open_stream({"streamType": "stdout"}, fin=True)
            await client.open_stream({"streamType": "resize"})
            streams[name] = (stdin, stdout)
        stdin, typed_out = streams["typing"]
        assert stdin is not None
        await asyncio.sleep(0.5)
        await stdin.write(b"40 2\r")  # the container's loop in the guest adds them up
        await read_until(typed_out, b"sum-42-done")
        await read_until(streams["watching"][1], b"sum-42-done")
    finally:
        await typing.close()
        await watching.close()
    for _ in range(50):
        if b"sum-42-done" in log_path.read_bytes():
            break
        await asyncio.sleep(0.2)
    assert b"sum-42-done" in log_path.read_bytes()
