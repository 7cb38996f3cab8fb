"""The streaming server over real HTTP on loopback, with a fake backend: tokens, WebSocket
remotecommand (v4, v5) and port-forward, statuses, disconnects."""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import subprocess
from pathlib import Path

import aiohttp
import pytest

from qmprt.config import StreamingConfig
from qmprt.errors import InvalidArgument
from qmprt.pod.streams import AttachStream, ExecStream, PortForwardStream
from qmprt.streaming import tokens
from qmprt.streaming.server import StreamingServer

from .fakes import FakeStreamBackend


def backend(server: StreamingServer) -> FakeStreamBackend:
    assert isinstance(server.backend, FakeStreamBackend)
    return server.backend


async def ws_session(url: str, protocol: str) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(url.replace("http", "ws", 1), protocols=(protocol,))
    return session, ws


async def collect(ws: aiohttp.ClientWebSocketResponse) -> tuple[dict[int, bytes], dict[str, object]]:
    """Everything the server sends, by channel, until it closes; and the decoded status."""
    channels: dict[int, bytes] = {}
    async for message in ws:
        if message.type == aiohttp.WSMsgType.BINARY:
            channels[message.data[0]] = channels.get(message.data[0], b"") + message.data[1:]
    return channels, json.loads(channels.get(3, b"{}"))


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io"], ids=["v5", "v4"])
async def test_exec_over_websocket_echoes_stdin_and_reports_the_exit(server: StreamingServer, protocol: str) -> None:
    url = server.url(ExecStream("c1", ("cat",), stdin=True))
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url
    session, ws = await ws_session(url, protocol)
    async with session:
        assert ws.protocol == protocol
        await ws.send_bytes(b"\x00hello ")
        await ws.send_bytes(b"\x00world")
        if protocol.startswith("v5"):
            await ws.send_bytes(b"\xff\x00")  # v5: stdin closed
        else:
            await asyncio.sleep(0.2)
            await backend(server).processes[0].close_stdin()  # v4 has no close signal
        channels, status = await collect(ws)
    assert channels[1] == b"hello world"
    assert status == {"metadata": {}, "status": "Success"}


async def test_a_non_zero_exit_is_kubelets_status(server: StreamingServer) -> None:
    session, ws = await ws_session(server.url(ExecStream("c1", ("exit", "3"))), "v5.channel.k8s.io")
    async with session:
        _, status = await collect(ws)
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}


async def test_resize_reaches_the_process(server: StreamingServer) -> None:
    session, ws = await ws_session(server.url(ExecStream("c1", ("stty",), tty=True, stdin=True, stderr=False)),
                                   "v5.channel.k8s.io")
    async with session:
        await ws.send_bytes(b"\x04" + json.dumps({"Width": 132, "Height": 43}).encode())
        await ws.send_bytes(b"\x04not json")  # ignored
        await asyncio.sleep(0.2)
        await ws.send_bytes(b"\xff\x00")
        channels, status = await collect(ws)
    assert channels[1] == b"43 132\n" and status["status"] == "Success"


async def test_a_client_that_leaves_kills_the_process(server: StreamingServer) -> None:
    session, ws = await ws_session(server.url(ExecStream("c1", ("yes",))), "v4.channel.k8s.io")
    async with session:
        message = await ws.receive()
        assert message.data[0] in (1, 2)
        await ws.close()
    for _ in range(100):
        if backend(server).processes[0].killed:
            break
        await asyncio.sleep(0.02)
    assert backend(server).processes[0].killed


async def test_an_error_opening_the_stream_is_the_status(server: StreamingServer) -> None:
    session, ws = await ws_session(server.url(ExecStream("c1", ("missing",))), "v5.channel.k8s.io")
    async with session:
        _, status = await collect(ws)
    assert status["status"] == "Failure" and "container gone" in str(status["message"])


async def test_tokens_are_single_use_kind_bound_and_404_otherwise(server: StreamingServer) -> None:
    url = server.url(ExecStream("c1", ("exit", "0")))
    async with aiohttp.ClientSession() as session:
        for bad in (server.base_url + "/exec/nonsense", url.replace("/exec/", "/attach/"),
                    server.base_url + "/other/x"):
            async with session.get(bad) as response:
                assert response.status == 404
        url = server.url(ExecStream("c1", ("exit", "0")))
        async with session.get(url) as response:  # no upgrade: refused, and the token is spent
            assert response.status == 400
        async with session.get(url, headers={"Upgrade": "websocket", "Connection": "Upgrade"}) as response:
            assert response.status == 404
    assert backend(server).processes == []  # nothing ran


def test_tokens_expire_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    pending = tokens.PendingRequests(60.0, clock=lambda: now[0])
    token = pending.put(AttachStream("c1"))
    assert len(token) >= 32
    now[0] = 61.0
    assert pending.take(token) is None
    monkeypatch.setattr(tokens, "MAX_PENDING", 3)
    for _ in range(3):
        pending.put(AttachStream("c1"))
    with pytest.raises(Exception, match="waiting for their clients"):
        pending.put(AttachStream("c1"))
    now[0] = 200.0
    pending.put(AttachStream("c1"))  # the expired ones made room


async def test_attach_over_websocket(server: StreamingServer) -> None:
    session, ws = await ws_session(server.url(AttachStream("c1", stdin=True)), "v5.channel.k8s.io")
    async with session:
        await ws.send_bytes(b"\x00ls\r")
        await ws.send_bytes(b"\xff\x00")
        channels, _ = await collect(ws)
    assert channels[1] == b"ls\r"


async def test_port_forward_over_websocket(server: StreamingServer) -> None:
    url = server.url(PortForwardStream("p1", (8080,)))
    session = aiohttp.ClientSession()
    async with session:
        ws = await session.ws_connect(url.replace("http", "ws", 1) + "?port=8080&port=1",
                                      protocols=("v4.channel.k8s.io",))
        received: dict[int, bytes] = {}
        for _ in range(4):  # each channel first carries its port, little endian
            message = await ws.receive()
            received[message.data[0]] = message.data[1:]
        assert received == {0: struct.pack("<H", 8080), 1: struct.pack("<H", 8080),
                            2: struct.pack("<H", 1), 3: struct.pack("<H", 1)}
        errors = await ws.receive()
        assert errors.data[0] == 3 and b"nothing listens on port 1" in errors.data[1:]
        await ws.send_bytes(b"\x00ping")
        reply = await ws.receive()
        assert reply.data == b"\x00PING"
        await ws.close()
    for _ in range(100):
        if backend(server).connections[0].closed:
            break
        await asyncio.sleep(0.02)
    assert backend(server).connections[0].closed


async def test_many_streams_at_once(server: StreamingServer) -> None:
    async def one(index: int) -> bytes:
        session, ws = await ws_session(server.url(ExecStream("c1", ("cat",), stdin=True)), "v5.channel.k8s.io")
        async with session:
            await ws.send_bytes(b"\x00" + str(index).encode())
            await ws.send_bytes(b"\xff\x00")
            channels, _ = await collect(ws)
        return channels[1]

    results = await asyncio.gather(*(one(index) for index in range(100)))
    assert results == [str(index).encode() for index in range(100)]


async def test_tls_when_a_certificate_is_configured(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    streaming = StreamingServer(StreamingConfig(cert_file=str(cert), key_file=str(key)), FakeStreamBackend())
    await streaming.start()
    try:
        url = streaming.url(ExecStream("c1", ("exit", "0")))
        assert url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url.replace("https", "wss", 1), protocols=("v5.channel.k8s.io",), ssl=trusted)
            _, status = await collect(ws)
            assert status["status"] == "Success"
            with pytest.raises(aiohttp.ClientConnectorError):  # an untrusted certificate is refused by the client
                await session.get(streaming.url(ExecStream("c1", ("exit", "0"))))
    finally:
        await streaming.stop()


def test_streaming_config_is_checked() -> None:
    for bad, message in (({"address": "nowhere"}, "host:port"), ({"key_file": "/k"}, "without"),
                         ({"cert_file": "/nonexistent/c.pem"}, "not a file"), ({"token_ttl_seconds": 0.0}, "ttl")):
        with pytest.raises(InvalidArgument, match=message):
            StreamingConfig(**bad).validate()  # type: ignore[arg-type]
