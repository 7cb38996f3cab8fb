"""remotecommand and port-forward over WebSocket (aiohttp's), as kubectl ≥ 1.30 and crictl speak them.

Every binary message starts with a channel byte. remotecommand: 0 stdin, 1 stdout, 2 stderr,
3 error (the final Status), 4 resize (``{"Width":…,"Height":…}``); ``v5.channel.k8s.io`` adds 255, a
close signal whose second byte names the channel (stdin: its EOF). Port-forward: for the i-th port,
channel 2i carries data and 2i+1 errors, and each starts with the port number (two bytes, little
endian) from the server, so the client can tell them apart.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import WSMessage, WSMsgType, web

from qmprt.errors import QmprtError
from qmprt.pod.streams import ByteStream
from qmprt.streaming.remotecommand import V4, V5, Input, parse_resize, splice, status_bytes

log = logging.getLogger(__name__)

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
REMOTECOMMAND_PROTOCOLS = (V5, V4)
PORT_FORWARD_PROTOCOLS = ("v4.channel.k8s.io", "portforward.k8s.io")
MAX_MESSAGE_BYTES = 1 << 20


class WebSocketIO:
    """A remotecommand client on a prepared ``WebSocketResponse``."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.protocol = ws.ws_protocol or V4

    async def inputs(self) -> AsyncIterator[Input]:
        async for message in self.ws:
            raw = _payload(message)
            if not raw:
                continue
            channel, data = raw[0], raw[1:]
            if channel == STDIN:
                yield Input("stdin", data)
            elif channel == RESIZE:
                resize = parse_resize(data)
                if resize is not None:
                    yield resize
            elif channel == CLOSE and self.protocol == V5 and data[:1] == bytes([STDIN]):
                yield Input("eof")

    async def output(self, stream: str, data: bytes) -> None:
        await self._send(STDOUT if stream == "stdout" else STDERR, data)

    async def finish(self, exit_code: int, error: str = "") -> None:
        await self._send(ERROR, status_bytes(self.protocol, exit_code, error))
        await self.ws.close()

    async def _send(self, channel: int, data: bytes) -> None:
        if self.ws.closed:
            return
        try:
            for start in range(0, max(len(data), 1), 64 * 1024):
                await self.ws.send_bytes(bytes([channel]) + data[start:start + 64 * 1024])
        except (ConnectionError, RuntimeError):
            pass  # the client left; run() learns it from inputs()


def _payload(message: WSMessage) -> bytes:
    """A message's bytes: binary frames as they are, text frames (the kubernetes Python client sends
    str data as text) as UTF-8; nothing for control frames."""
    if message.type == WSMsgType.BINARY:
        return bytes(message.data)
    if message.type == WSMsgType.TEXT:
        return str(message.data).encode()
    return b""


async def prepare(request: web.Request, protocols: Sequence[str]) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=protocols, max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30.0)
    await ws.prepare(request)
    return ws


async def port_forward(
    ws: web.WebSocketResponse, ports: Sequence[int], connect: Callable[[int], Awaitable[ByteStream]]
) -> None:
    """One TCP connection per port for the life of the WebSocket."""
    for index, port in enumerate(ports):
        header = struct.pack("<H", port)
        await ws.send_bytes(bytes([2 * index]) + header)
        await ws.send_bytes(bytes([2 * index + 1]) + header)
    queues: list[asyncio.Queue[bytes]] = [asyncio.Queue(64) for _ in ports]
    tasks = [
        asyncio.ensure_future(_forward_one(ws, index, port, queues[index], connect)) for index, port in enumerate(ports)
    ]
    # A channel cannot be closed alone (v4): once every port's connection ended, the WebSocket ends.
    closing = asyncio.ensure_future(_close_when_done(ws, tasks))
    try:
        async for message in ws:
            raw = _payload(message)
            if raw and raw[0] % 2 == 0 and raw[0] // 2 < len(queues):
                await queues[raw[0] // 2].put(raw[1:])
    finally:
        for task in (*tasks, closing):
            task.cancel()
        await asyncio.gather(*tasks, closing, return_exceptions=True)


async def _close_when_done(ws: web.WebSocketResponse, tasks: Sequence[asyncio.Future[None]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    await ws.close()


async def _forward_one(
    ws: web.WebSocketResponse, index: int, port: int, queue: asyncio.Queue[bytes],
    connect: Callable[[int], Awaitable[ByteStream]],
) -> None:
    try:
        connection = await connect(port)
    except QmprtError as err:
        await ws.send_bytes(bytes([2 * index + 1]) + str(err).encode())
        return

    async def send(data: bytes) -> None:
        await ws.send_bytes(bytes([2 * index]) + data)

    try:
        await splice(connection, queue.get, send)
    except (ConnectionError, RuntimeError) as err:
        log.info("port-forward to %d ended: %s", port, err)
