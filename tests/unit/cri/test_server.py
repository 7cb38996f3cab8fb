"""The socket: its modes, who may own it, stale files, graceful stop; every proto RPC is wired."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import stat
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt.cri.server import CRIServer, ImageService, RuntimeService, SocketClaim, serve
from qmprt.cri.socket import socket_path
from qmprt.errors import FailedPrecondition, InvalidArgument

from .conftest import Client, status_of
from .fake import FakeRuntime


async def test_socket_is_0660_in_a_private_directory(server: CRIServer, fake: FakeRuntime) -> None:
    path = Path(fake.config.runtime.socket)
    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert stat.S_IMODE(path.lstat().st_mode) == 0o660
    assert stat.S_IMODE(path.parent.stat().st_mode) in (0o700, 0o750)


async def test_a_second_server_on_the_same_socket_is_refused(server: CRIServer, fake: FakeRuntime) -> None:
    with pytest.raises(FailedPrecondition, match="another qmprt"):
        SocketClaim(fake.config.runtime.socket)


async def test_a_foreign_live_server_is_not_displaced(socket_dir: Path) -> None:
    path = socket_dir / "other.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        with pytest.raises(FailedPrecondition, match="another server is listening"):
            SocketClaim(str(path))
        assert path.exists()
    finally:
        listener.close()


async def test_a_stale_socket_is_replaced(fake: FakeRuntime) -> None:
    path = Path(fake.config.runtime.socket)
    path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    cri_server = CRIServer(fake, SocketClaim(str(path)))
    await cri_server.start()
    try:
        channel = aio.insecure_channel(cri_server.address)
        response = await api_pb2_grpc.RuntimeServiceStub(channel).Version(cri.VersionRequest())
        assert response.runtime_name == "qmprt"
        await channel.close()
    finally:
        await cri_server.stop(grace=0)
    assert not path.exists(), "the socket is removed at stop"


async def test_a_regular_file_in_the_way_is_left_alone(socket_dir: Path) -> None:
    path = socket_dir / "qmprt.sock"
    path.write_text("not a socket")
    with pytest.raises(FailedPrecondition, match="not a socket"):
        SocketClaim(str(path))
    assert path.read_text() == "not a socket"


@pytest.mark.parametrize(
    ("address", "expected"),
    [("unix:///run/q/q.sock", "/run/q/q.sock"), ("/run/q/q.sock", "/run/q/q.sock")],
    ids=["unix-url", "plain-path"],
)
def test_socket_addresses(address: str, expected: str) -> None:
    assert socket_path(address) == expected


@pytest.mark.parametrize("address", ["run/q.sock", "/" + "x" * 120], ids=["relative", "too-long"])
def test_bad_socket_addresses(address: str) -> None:
    with pytest.raises(InvalidArgument):
        socket_path(address)


def _rpc_names(service: str) -> list[str]:
    return [method.name for method in cri.DESCRIPTOR.services_by_name[service].methods]


@pytest.mark.parametrize(
    ("service", "servicer"),
    [("RuntimeService", RuntimeService), ("ImageService", ImageService)],
    ids=["runtime", "image"],
)
def test_every_rpc_of_the_proto_has_a_handler(service: str, servicer: type) -> None:
    def served(function: object) -> bool:
        return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)

    missing = [name for name in _rpc_names(service) if not served(getattr(servicer, name, None))]
    assert not missing, f"RPCs that would get the stub's default answer: {missing}"


async def test_graceful_stop_lets_calls_in_flight_finish(server: CRIServer, client: Client, fake: FakeRuntime) -> None:
    fake.images.pull_delay = 0.5
    pull = asyncio.ensure_future(client.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image="slow"))))
    await asyncio.sleep(0.2)
    await server.stop(grace=3)
    response = await pull
    assert response.image_ref.startswith("sha256:")


async def test_calls_cut_off_by_the_grace_are_cancelled(server: CRIServer, client: Client, fake: FakeRuntime) -> None:
    fake.images.pull_delay = 30
    pull = client.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image="slow")))
    task = asyncio.ensure_future(status_of(pull))
    await asyncio.sleep(0.2)
    await server.stop(grace=0.2)
    code, _ = await task
    assert code != grpc.StatusCode.OK
    assert fake.images.pulls_cancelled == 1


async def test_serve_stops_on_sigterm_and_closes_the_runtime(fake: FakeRuntime) -> None:
    async def open_fake(config: object) -> FakeRuntime:
        return fake

    served: list[str] = []

    def ready(cri_server: CRIServer) -> None:
        served.append(cri_server.address)
        assert stat.S_IMODE(Path(fake.config.runtime.socket).lstat().st_mode) == 0o660
        os.kill(os.getpid(), signal.SIGTERM)  # serve's handler is installed by now

    await asyncio.wait_for(serve(fake.config, opener=open_fake, ready=ready), 10)
    assert served and fake.closed
    assert not Path(fake.config.runtime.socket).exists()


async def test_serve_refuses_a_live_socket_before_opening_the_runtime(server: CRIServer, fake: FakeRuntime) -> None:
    opened: list[object] = []

    async def open_fake(config: object) -> FakeRuntime:
        opened.append(config)
        return fake

    with pytest.raises(FailedPrecondition):
        await serve(fake.config, opener=open_fake)
    assert not opened
