"""The session as the streaming server will use it: behind aiohttp's upgrade, reached by tests' SpdyClient."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from qmprt.streaming.spdy import SpdySession, SpdyStream
from tests.spdy_client import SpdyClient, UpgradeRefused


async def echo_exec(request: web.Request) -> web.StreamResponse:
    """A toy exec: stdin comes back on stdout upper-cased, then a status on the error stream."""
    if request.headers.get("Upgrade", "").lower() != "spdy/3.1":
        raise web.HTTPBadRequest(text="SPDY/3.1 upgrade required")
    response = web.StreamResponse(status=101, headers={
        "Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": "v4.channel.k8s.io",
    })
    await response.prepare(request)
    transport = request.transport
    assert transport is not None
    # aiohttp's parser takes only "websocket" for an upgrade, so its protocol's pause_reading would
    # pause an HTTP parser that is not there: pause the transport itself.
    session = SpdySession(transport.write, drain=request.protocol._drain_helper,
                          pause_reading=transport.pause_reading,
                          resume_reading=transport.resume_reading)
    request.protocol.set_parser(session.parser)  # type: ignore[arg-type]  # it needs only feed_data/feed_eof
    streams: dict[str, SpdyStream] = {}
    while len(streams) < 3 and (stream := await session.accept_stream()) is not None:
        streams[stream.headers["streamtype"]] = stream
    while chunk := await streams["stdin"].read():
        await streams["stdout"].write(chunk.upper())
    await streams["stdout"].close()
    await streams["error"].write(b'{"status":"Success"}')
    await streams["error"].close()
    await session.close()
    transport.close()  # the session only says GOAWAY; the connection is its owner's to close
    return response


@pytest.fixture
async def server() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/exec/{token}", echo_exec)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


@pytest.mark.parametrize("flow_control", [True, False], ids=["spdy31-client", "spdystream-like"])
async def test_exec_through_aiohttp(server: int, flow_control: bool) -> None:
    client = await SpdyClient.connect("127.0.0.1", server, "/exec/token", flow_control=flow_control)
    async with client:
        assert client.status == 101 and client.protocol == "v4.channel.k8s.io"
        error = await client.open_stream({"streamType": "error"}, fin=True)
        stdout = await client.open_stream({"streamType": "stdout"}, fin=True)
        stdin = await client.open_stream({"streamType": "stdin"})
        assert await client.ping() >= 0
        payload = b"abc" * 100_000  # 300 KiB: several windows each way
        output = asyncio.create_task(client.read_all(stdout))
        await stdin.write(payload)
        await stdin.close()
        assert await asyncio.wait_for(output, 5) == payload.upper()
        assert await client.read_all(error) == b'{"status":"Success"}'
        await asyncio.wait_for(client.session.closed.wait(), 5)  # GOAWAY, then the server closed


async def test_a_plain_get_is_refused(server: int) -> None:
    with pytest.raises(UpgradeRefused) as refused:
        await SpdyClient.connect("127.0.0.1", server, "/nowhere")
    assert refused.value.status == 404
