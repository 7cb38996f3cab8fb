"""The real grpc.aio CRI server on a real unix socket, over the in-memory FakeRuntime."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt import config as config_module
from qmprt.cri.server import CRIServer, SocketClaim

from .fake import FakeRuntime


# Keys and values kubelet and people put in labels: dots, slashes, unicode, spaces, empty values.
ODD_LABELS = {
    "io.kubernetes.pod.name": "web-0",
    "io.kubernetes.pod.namespace": "default",
    "example.com/ünïcode-ключ": "värde ✓ 日本",
    "with space": "  leading and trailing  ",
    "empty": "",
    "quote\"and'apostrophe": "back\\slash\ttab\nnewline",
    "emoji": "🐧",
}


@pytest.fixture
def fake(tmp_path: Path, socket_dir: Path) -> FakeRuntime:
    config = config_module.load(state_dir=str(tmp_path / "state"), socket=str(socket_dir / "run" / "qmprt.sock"))
    return FakeRuntime(config, tmp_path)


@dataclass
class Client:
    runtime: Any  # RuntimeServiceStub
    images: Any  # ImageServiceStub
    channel: aio.Channel
    address: str


@pytest.fixture
async def server(fake: FakeRuntime) -> AsyncIterator[CRIServer]:
    cri_server = CRIServer(fake, SocketClaim(fake.config.runtime.socket))
    await cri_server.start()
    yield cri_server
    await cri_server.stop(grace=0)


@pytest.fixture
async def client(server: CRIServer) -> AsyncIterator[Client]:
    channel = aio.insecure_channel(server.address)
    yield Client(
        api_pb2_grpc.RuntimeServiceStub(channel), api_pb2_grpc.ImageServiceStub(channel), channel, server.address
    )
    await channel.close()


async def status_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call ends with (OK and "" when it succeeds)."""
    try:
        await call
    except aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def pod_config(name: str = "web", uid: str = "uid-1", **changes: Any) -> cri.PodSandboxConfig:
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=uid, namespace="default", attempt=0),
        log_directory="/var/log/pods/default_web_uid-1",
        labels={"app": "web"},
    )
    _apply(config, changes)
    return config


def container_config(name: str = "vm", image: str = "tiny", **changes: Any) -> cri.ContainerConfig:
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=name, attempt=0),
        image=cri.ImageSpec(image=image),
        log_path=f"{name}/0.log",
        labels={"role": "main"},
    )
    _apply(config, changes)
    return config


def _apply(message: Any, changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict):
            getattr(message, key).update(value)
        elif isinstance(value, list):
            getattr(message, key).extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(message, key).CopyFrom(value)
        else:
            setattr(message, key, value)


async def run_pod(client: Client, config: cri.PodSandboxConfig | None = None, handler: str = "") -> str:
    response = await client.runtime.RunPodSandbox(
        cri.RunPodSandboxRequest(config=config or pod_config(), runtime_handler=handler)
    )
    return str(response.pod_sandbox_id)


async def create_container(
    client: Client, fake: FakeRuntime, pod_id: str, config: cri.ContainerConfig | None = None
) -> str:
    config = config or container_config()
    fake.images.add(config.image.image)
    response = await client.runtime.CreateContainer(
        cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config())
    )
    return str(response.container_id)


def replace_config(fake: FakeRuntime, **runtime_changes: Any) -> None:
    fake.config = dataclasses.replace(
        fake.config, runtime=dataclasses.replace(fake.config.runtime, **runtime_changes)
    )
