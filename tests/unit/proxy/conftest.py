"""The proxy on a real unix socket in front of two real CRI servers (qmprt's own, over FakeRuntime):
``vm`` serves the handler ``qmprt`` and ``.qcow2`` images, ``ctr`` is the default."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt import config as config_module
from qmprt.cri.server import CRIServer, SocketClaim
from qmprt.proxy.config import ProxyConfig, proxy_config_from_table
from qmprt.proxy.server import ProxyServer

from ..cri.conftest import Client
from ..cri.fake import FakeRuntime


class Downstream:
    """One fake runtime behind a real CRI server that a test can stop and start again."""

    def __init__(self, name: str, root: Path, socket: Path) -> None:
        config = config_module.load(state_dir=str(root / name), socket=str(socket))
        self.name = name
        self.fake = FakeRuntime(config, root / name)
        self.server: CRIServer | None = None

    async def start(self) -> None:
        self.server = CRIServer(self.fake, SocketClaim(self.fake.config.runtime.socket))
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=0)
            self.server = None


@dataclass
class Proxied:
    config: ProxyConfig
    vm: Downstream
    ctr: Downstream
    server: ProxyServer | None = None
    client: Client | None = None

    async def start(self) -> Client:
        self.server = ProxyServer(self.config, SocketClaim(self.config.socket))
        await self.server.start()
        channel = aio.insecure_channel(self.server.address)
        self.client = Client(
            api_pb2_grpc.RuntimeServiceStub(channel), api_pb2_grpc.ImageServiceStub(channel), channel,
            self.server.address,
        )
        return self.client

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.channel.close()
            self.client = None
        if self.server is not None:
            await self.server.stop(grace=0)
            self.server = None

    async def restart(self, **changes: Any) -> Client:
        await self.stop()
        if changes:
            self.config = dataclasses.replace(self.config, **changes)
        return await self.start()


def table(socket_dir: Path, state_dir: Path) -> dict[str, Any]:
    return {
        "proxy": {"socket": str(socket_dir / "proxy.sock"), "state_dir": str(state_dir), "default": "ctr"},
        "downstream": [
            {"name": "vm", "endpoint": f"unix://{socket_dir}/vm.sock", "handlers": ["qmprt"],
             "image_patterns": [r"\.qcow2$"]},
            {"name": "ctr", "endpoint": f"unix://{socket_dir}/ctr.sock", "handlers": ["runc"]},
        ],
    }


@pytest.fixture
async def proxied(tmp_path: Path, socket_dir: Path) -> AsyncIterator[Proxied]:
    vm = Downstream("vm", tmp_path, socket_dir / "vm.sock")
    ctr = Downstream("ctr", tmp_path, socket_dir / "ctr.sock")
    ctr.fake.config = dataclasses.replace(
        ctr.fake.config, runtime=dataclasses.replace(ctr.fake.config.runtime, handlers=("runc",))
    )
    await vm.start()
    await ctr.start()
    setup = Proxied(proxy_config_from_table(table(socket_dir, tmp_path / "proxy")), vm, ctr)
    await setup.start()
    yield setup
    await setup.stop()
    await vm.stop()
    await ctr.stop()
