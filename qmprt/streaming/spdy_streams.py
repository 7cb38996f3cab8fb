"""remotecommand and port-forward over SPDY/3.1, as kubelet's, kubectl's and crictl's Go clients speak.

The client upgrades the connection (``Upgrade: SPDY/3.1``) offering protocol versions in
``X-Stream-Protocol-Version``; the server answers 101 with the one it picked, then the client opens
one stream per purpose, named by its ``streamtype`` header:

- remotecommand (``v4.channel.k8s.io``; ``v3.channel.k8s.io`` and ``channel.k8s.io`` as well): ``error``
  (the server writes the final status there: JSON from v4 on, a message before), ``stdin``, ``stdout``,
  ``stderr`` (not with a tty), ``resize`` (v3+, JSON terminal sizes back to back);
- port-forward (``portforward.k8s.io``): per forwarded connection an ``error`` and a ``data`` stream
  with the same ``requestid`` header and the ``port`` header.

kubectl and crictl also tunnel the same SPDY port-forward through a WebSocket (subprotocol
``SPDY/3.1+portforward.k8s.io``): SPDY's bytes in binary messages, no channel byte
(``WebSocketTunnel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from aiohttp import WSMsgType, web

from qmprt.errors import QmprtError
from qmprt.pod.streams import AttachStream, ByteStream, ExecStream
from qmprt.streaming.remotecommand import V2, V3, V4, Input, choose_protocol, parse_resize, splice, status_bytes
from qmprt.streaming.spdy import SpdySession, SpdyStream, SpdyStreamClosed

log = logging.getLogger(__name__)

REMOTECOMMAND_PROTOCOLS = (V4, V3, V2)
STREAM_WAIT_S = 30.0  # kubelet's streamCreationTimeout
RESIZE_BUFFER_MAX = 64 * 1024


class UpgradedSession:
    """A SPDY session on the connection of ``response`` (the 101 answer)."""

    def __init__(self, session: SpdySession, response: web.StreamResponse, protocol: str) -> None:
        self.session = session
        self.response = response
        self.protocol = protocol

    async def close(self) -> None:
        await self.session.close()


async def upgrade(request: web.Request, protocols: Sequence[str]) -> UpgradedSession | web.StreamResponse:
    """Answer 101 and put a SPDY session on the connection, or answer why not."""
    offered = request.headers.getall("X-Stream-Protocol-Version", [])
    chosen = choose_protocol(offered, protocols)
    if chosen is None:
        return web.Response(
            status=403, text=f"no common stream protocol: offered {', '.join(offered) or 'none'}; qmprt speaks "
            f"{', '.join(protocols)}\n",
        )
    response = web.StreamResponse(
        status=101, headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": chosen}
    )
    await response.prepare(request)
    protocol, transport = request.protocol, request.transport
    assert transport is not None
    session = SpdySession(
        transport.write,
        drain=protocol._drain_helper,  # what aiohttp's own writers wait on (the transport's buffer)
        # The transport's own switches: aiohttp's protocol-level ones also drive its HTTP parser,
        # which is done with this connection.
        pause_reading=transport.pause_reading,
        resume_reading=transport.resume_reading,
    )
    protocol.keep_alive(False)
    protocol.set_parser(session.parser)  # type: ignore[arg-type]  # aiohttp's payload-parser interface
    return UpgradedSession(session, response, chosen)


TUNNELED_PORT_FORWARD = "SPDY/3.1+portforward.k8s.io"
TUNNEL_QUEUE_FRAMES = 64


class WebSocketTunnel:
    """A SPDY session whose bytes travel in a WebSocket's binary messages."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._sent = asyncio.Event()
        self.session = SpdySession(self._out.put_nowait, drain=self._drain)
        self._tasks = [asyncio.ensure_future(self._send()), asyncio.ensure_future(self._receive())]

    def upgraded(self) -> UpgradedSession:
        return UpgradedSession(self.session, self.ws, "portforward.k8s.io")

    async def _drain(self) -> None:
        while self._out.qsize() > TUNNEL_QUEUE_FRAMES:
            self._sent.clear()
            await self._sent.wait()

    async def _send(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await self.ws.send_bytes(await self._out.get())
                self._sent.set()

    async def _receive(self) -> None:
        try:
            async for message in self.ws:
                if message.type == WSMsgType.BINARY and self.session.receive(bytes(message.data)):
                    break
        finally:
            self.session.connection_lost()

    async def close(self) -> None:
        await self.session.close()
        for _ in range(100):  # GOAWAY and the last frames out, briefly
            if self._out.empty():
                break
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ws.close()


def expected_streams(protocol: str, request: ExecStream | AttachStream) -> set[str]:
    wanted = {"error"}
    wanted |= {"stdin"} if request.stdin else set()
    wanted |= {"stdout"} if request.stdout else set()
    wanted |= {"stderr"} if request.stderr and not request.tty else set()
    wanted |= {"resize"} if request.tty and protocol != V2 else set()
    return wanted


class RemoteCommandIO:
    """A remotecommand client's streams, once all that the request needs have arrived."""

    def __init__(self, upgraded: UpgradedSession, streams: dict[str, SpdyStream], tty: bool) -> None:
        self.upgraded = upgraded
        self.streams = streams
        self.tty = tty

    @classmethod
    async def accept(cls, upgraded: UpgradedSession, request: ExecStream | AttachStream) -> RemoteCommandIO | None:
        """Wait for the streams (at most ``STREAM_WAIT_S``); None if the client did not open them."""
        wanted = expected_streams(upgraded.protocol, request)
        streams: dict[str, SpdyStream] = {}
        try:
            async with asyncio.timeout(STREAM_WAIT_S):
                while not wanted <= set(streams):
                    stream = await upgraded.session.accept_stream()
                    if stream is None:
                        return None
                    kind = stream.headers.get("streamtype", "")
                    if kind in wanted and kind not in streams:
                        streams[kind] = stream
                    else:
                        await stream.reset()
        except TimeoutError:
            log.info("SPDY client opened %s of %s in %.0f s", sorted(streams), sorted(wanted), STREAM_WAIT_S)
            return None
        return cls(upgraded, streams, request.tty)

    async def inputs(self) -> AsyncIterator[Input]:
        queue: asyncio.Queue[Input | None] = asyncio.Queue(16)
        readers = [asyncio.ensure_future(self._read_stdin(queue))] if "stdin" in self.streams else []
        if "resize" in self.streams:
            readers.append(asyncio.ensure_future(self._read_resizes(queue)))
        closed = asyncio.ensure_future(self.upgraded.session.wait_closed())
        getter: asyncio.Future[Input | None] | None = None
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    return  # the client is gone
                event = getter.result()
                if event is not None:
                    yield event
        finally:
            tasks: list[asyncio.Future[Any]] = [*readers, closed, *([getter] if getter is not None else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_stdin(self, queue: asyncio.Queue[Input | None]) -> None:
        stream = self.streams["stdin"]
        while data := await stream.read():
            await queue.put(Input("stdin", data))
        await queue.put(Input("eof"))

    async def _read_resizes(self, queue: asyncio.Queue[Input | None]) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        stream = self.streams["resize"]
        while data := await stream.read():
            buffer = (buffer + data.decode(errors="replace")).lstrip()
            if len(buffer) > RESIZE_BUFFER_MAX:
                return
            while buffer:
                try:
                    value, end = decoder.raw_decode(buffer)
                except ValueError:
                    break
                buffer = buffer[end:].lstrip()
                resize = parse_resize(json.dumps(value).encode())
                if resize is not None:
                    await queue.put(resize)

    async def output(self, stream: str, data: bytes) -> None:
        target = self.streams.get("stdout" if self.tty else stream)
        if target is None:
            return
        with contextlib.suppress(SpdyStreamClosed, ConnectionError):
            await target.write(data)

    async def finish(self, exit_code: int, error: str = "") -> None:
        for name in ("stdout", "stderr"):
            if name in self.streams:
                with contextlib.suppress(SpdyStreamClosed, ConnectionError):
                    await self.streams[name].close()
        status = status_bytes(self.upgraded.protocol, exit_code, error)
        with contextlib.suppress(SpdyStreamClosed, ConnectionError):
            if status:
                await self.streams["error"].write(status)
            await self.streams["error"].close()


async def port_forward(
    upgraded: UpgradedSession, ports: Sequence[int], connect: Callable[[int], Awaitable[ByteStream]]
) -> None:
    """Serve the client's stream pairs until it goes away; each pair is one TCP connection."""
    pairs: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Task[None]] = set()
    try:
        while (stream := await upgraded.session.accept_stream()) is not None:
            kind, request_id = stream.headers.get("streamtype", ""), stream.headers.get("requestid", "")
            if kind not in ("error", "data") or len(pairs) >= 1024:
                await stream.reset()
                continue
            log.debug("port-forward stream %s of request %r, headers %s", kind, request_id, stream.headers)
            pair = pairs.setdefault(request_id, {})
            pair[kind] = stream
            if kind == "data":
                task = asyncio.ensure_future(_forward(pairs.pop(request_id), connect))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _forward(pair: dict[str, SpdyStream], connect: Callable[[int], Awaitable[ByteStream]]) -> None:
    data, error = pair["data"], pair.get("error")
    port_header = data.headers.get("port", "")
    try:
        if not port_header.isdigit() or not 0 < int(port_header) < 65536:
            raise QmprtError(f"port {port_header[:20]!r} is not a TCP port (1-65535)")
        connection = await connect(int(port_header))
    except QmprtError as err:
        if error is not None:
            with contextlib.suppress(SpdyStreamClosed, ConnectionError):
                await error.write(str(err).encode())
                await error.close()
        await data.reset()
        return
    try:
        await splice(connection, data.read, data.write)
    except (SpdyStreamClosed, ConnectionError) as err:
        log.info("port-forward to %s ended: %s", port_header, err)
    finally:
        for stream in (data, error):
            if stream is not None:
                with contextlib.suppress(SpdyStreamClosed, ConnectionError):
                    await stream.close()
