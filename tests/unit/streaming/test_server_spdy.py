"""The streaming server over SPDY/3.1 (the test client in tests/spdy_client.py), with a fake backend:
protocol negotiation, exec streams and statuses by version, resize, port-forward pairs."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import aiohttp
import pytest

from qmprt.pod.streams import ExecStream, PortForwardStream
from qmprt.streaming.server import StreamingServer
from qmprt.streaming.spdy import SpdySession
from tests.spdy_client import SpdyClient, UpgradeRefused

from .fakes import FakeStreamBackend


async def connect(url: str, protocols: tuple[str, ...], *, flow_control: bool = False) -> SpdyClient:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return await SpdyClient.connect(parts.hostname, parts.port, parts.path, protocols=protocols,
                                    flow_control=flow_control)


@pytest.mark.parametrize("flow_control", [False, True], ids=["spdystream-like", "windowed"])
async def test_exec_v4_echoes_stdin_and_gives_a_json_status(server: StreamingServer, flow_control: bool) -> None:
    url = server.url(ExecStream("c1", ("cat",), stdin=True))
    async with await connect(url, ("v4.channel.k8s.io", "v3.channel.k8s.io"), flow_control=flow_control) as client:
        assert client.protocol == "v4.channel.k8s.io"
        error = await client.open_stream({"streamType": "error"}, fin=True)
        stdin = await client.open_stream({"streamType": "stdin"})
        stdout = await client.open_stream({"streamType": "stdout"}, fin=True)
        stderr = await client.open_stream({"streamType": "stderr"}, fin=True)
        payload = bytes(range(256)) * 1024  # 256 KiB: past every initial window
        await stdin.write(payload)
        await stdin.close()
        output, status, errors = await asyncio.gather(
            client.read_all(stdout), client.read_all(error), client.read_all(stderr)
        )
    assert output == payload and errors == b""
    assert json.loads(status) == {"metadata": {}, "status": "Success"}


async def test_exec_v3_and_v2_statuses_are_plain_text(server: StreamingServer) -> None:
    for protocol in ("v3.channel.k8s.io", "channel.k8s.io"):
        async with await connect(server.url(ExecStream("c1", ("exit", "4"))), (protocol,)) as client:
            assert client.protocol == protocol
            error = await client.open_stream({"streamType": "error"}, fin=True)
            await client.open_stream({"streamType": "stdout"}, fin=True)
            await client.open_stream({"streamType": "stderr"}, fin=True)
            assert await client.read_all(error) == b"command terminated with non-zero exit code: exit status 4"


async def test_tty_exec_takes_resizes_from_its_resize_stream(server: StreamingServer) -> None:
    url = server.url(ExecStream("c1", ("stty",), tty=True, stdin=True, stderr=False))
    async with await connect(url, ("v4.channel.k8s.io",)) as client:
        error = await client.open_stream({"streamType": "error"}, fin=True)
        stdin = await client.open_stream({"streamType": "stdin"})
        stdout = await client.open_stream({"streamType": "stdout"}, fin=True)
        resize = await client.open_stream({"streamType": "resize"})
        # kubectl writes one JSON object per resize, back to back, split anywhere.
        await resize.write(b'{"Width":80,"Height":24}{"Width":1')
        await resize.write(b'00,"Height":30}')
        await asyncio.sleep(0.2)
        await stdin.close()
        output = await client.read_all(stdout)
        assert json.loads(await client.read_all(error))["status"] == "Success"
    assert output == b"30 100\n"


async def test_no_common_protocol_is_refused(server: StreamingServer) -> None:
    with pytest.raises(UpgradeRefused) as refused:
        await connect(server.url(ExecStream("c1", ("cat",))), ("v9.channel.k8s.io",))
    assert refused.value.status == 403 and b"v4.channel.k8s.io" in refused.value.body


async def test_a_client_that_leaves_kills_the_process(server: StreamingServer) -> None:
    client = await connect(server.url(ExecStream("c1", ("yes",))), ("v4.channel.k8s.io",))
    await client.open_stream({"streamType": "error"}, fin=True)
    stdout = await client.open_stream({"streamType": "stdout"}, fin=True)
    await client.open_stream({"streamType": "stderr"}, fin=True)
    assert await stdout.read()
    await client.close()
    backend = server.backend
    assert isinstance(backend, FakeStreamBackend)
    for _ in range(100):
        if backend.processes[0].killed:
            break
        await asyncio.sleep(0.02)
    assert backend.processes[0].killed


async def test_port_forward_pairs(server: StreamingServer) -> None:
    url = server.url(PortForwardStream("p1", (8080,)))
    async with await connect(url, ("portforward.k8s.io",)) as client:
        assert client.protocol == "portforward.k8s.io"
        for request_id in ("0", "1"):
            error = await client.open_stream({"streamType": "error", "port": "8080", "requestID": request_id}, fin=True)
            data = await client.open_stream({"streamType": "data", "port": "8080", "requestID": request_id})
            await data.write(b"hello " + request_id.encode())
            await data.close()
            assert await client.read_all(data) == b"HELLO " + request_id.encode()
            assert await client.read_all(error) == b""
        error = await client.open_stream({"streamType": "error", "port": "1", "requestID": "2"}, fin=True)
        await client.open_stream({"streamType": "data", "port": "1", "requestID": "2"})
        assert b"nothing listens on port 1" in await client.read_all(error)


async def test_port_forward_tunneled_through_a_websocket(server: StreamingServer) -> None:
    """kubectl's and crictl's WebSocket port-forward: SPDY frames inside binary WebSocket messages."""
    url = server.url(PortForwardStream("p1", (8080,)))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url.replace("http", "ws", 1), protocols=("SPDY/3.1+portforward.k8s.io",))
        assert ws.protocol == "SPDY/3.1+portforward.k8s.io"
        outgoing: asyncio.Queue[bytes] = asyncio.Queue()
        client = SpdySession(outgoing.put_nowait, client=True, peer_flow_control=False)

        async def pump_out() -> None:
            while True:
                await ws.send_bytes(await outgoing.get())

        async def pump_in() -> None:
            async for message in ws:
                client.receive(bytes(message.data))
            client.connection_lost()

        pumps = [asyncio.ensure_future(pump_out()), asyncio.ensure_future(pump_in())]
        try:
            error = await client.open_stream({"streamtype": "error", "port": "8080", "requestid": "0"}, fin=True)
            data = await client.open_stream({"streamtype": "data", "port": "8080", "requestid": "0"})
            await data.write(b"tunneled")
            await data.close()
            assert await SpdyClient.read_all(data) == b"TUNNELED"
            assert await SpdyClient.read_all(error) == b""
        finally:
            await ws.close()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
