"""A small SPDY/3.1 client for tests: the HTTP/1.1 upgrade, then streams, as kubectl's would open.

    async with await SpdyClient.connect("127.0.0.1", port, "/exec/TOKEN",
                                        protocols=["v4.channel.k8s.io"]) as client:
        assert client.protocol == "v4.channel.k8s.io"
        error = await client.open_stream({"streamType": "error"}, fin=True)
        stdout = await client.open_stream({"streamType": "stdout"}, fin=True)
        stdin = await client.open_stream({"streamType": "stdin"})
        await stdin.write(b"hello\\n"); await stdin.close()
        output = await client.read_all(stdout)

``connect`` sends ``GET path`` with ``Connection: Upgrade``, ``Upgrade: SPDY/3.1`` and one
``X-Stream-Protocol-Version`` header per entry of ``protocols`` (plus ``headers``); anything but
101 raises :class:`UpgradeRefused` with the status, headers and body. After the upgrade it runs
qmprt's own :class:`SpdySession` in client mode over the socket (odd stream ids, waits for each
SYN_REPLY). ``flow_control`` True announces our window with SETTINGS, as a SPDY/3.1 client would, so
the server keeps to it; False behaves like Go's spdystream, which never sends SETTINGS or
WINDOW_UPDATE. Headers the client sends are lower-cased on the wire, as spdystream does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections.abc import Mapping, Sequence
from types import TracebackType

from qmprt.streaming.spdy import SpdySession, SpdyStream
from qmprt.streaming.spdy_frames import (
    DEFAULT_WINDOW, SETTINGS_INITIAL_WINDOW_SIZE, Frame, Setting, SettingsFrame, WindowUpdateFrame,
)


class UpgradeRefused(Exception):
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"upgrade refused: HTTP {status} {body[:200]!r}")
        self.status, self.headers, self.body = status, headers, body


class _SpdystreamLikeSession(SpdySession):
    """Never grants window, as spdystream never does."""

    def send(self, frame: Frame) -> None:
        if not isinstance(frame, WindowUpdateFrame):
            super().send(frame)


class SpdyClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 session: SpdySession, status: int, headers: dict[str, str]) -> None:
        self.reader, self.writer, self.session = reader, writer, session
        self.status, self.response_headers = status, headers
        self._pump: asyncio.Task[None] | None = None

    @property
    def protocol(self) -> str | None:
        """The subprotocol the server chose (its X-Stream-Protocol-Version)."""
        return self.response_headers.get("x-stream-protocol-version")

    @classmethod
    async def connect(
        cls, host: str, port: int, path: str, headers: Mapping[str, str] | None = None, *,
        protocols: Sequence[str] = ("v4.channel.k8s.io",), ssl: ssl_module.SSLContext | None = None,
        flow_control: bool = True,
    ) -> SpdyClient:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: Upgrade", "Upgrade: SPDY/3.1"]
        lines += [f"X-Stream-Protocol-Version: {protocol}" for protocol in protocols]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, response_headers = await _read_response_head(reader)
        if status != 101:
            body = await _read_body(reader, response_headers)
            writer.close()
            raise UpgradeRefused(status, response_headers, body)
        session_class = SpdySession if flow_control else _SpdystreamLikeSession
        transport = writer.transport
        # A server that ignores windows (spdystream) is held back by pausing the socket, not by
        # resetting the stream, so a fast server's output arrives whole.
        session = session_class(writer.write, drain=writer.drain, client=True, peer_flow_control=flow_control,
                                pause_reading=transport.pause_reading, resume_reading=transport.resume_reading)
        client = cls(reader, writer, session, status, response_headers)
        if flow_control:
            session.send(SettingsFrame((Setting(SETTINGS_INITIAL_WINDOW_SIZE, DEFAULT_WINDOW),)))
        client._pump = asyncio.create_task(client._read_loop())
        return client

    async def _read_loop(self) -> None:
        try:
            while data := await self.reader.read(65536):
                if self.session.receive(data):
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self.session.connection_lost()

    async def open_stream(self, headers: Mapping[str, str], *, fin: bool = False) -> SpdyStream:
        return await self.session.open_stream(headers, fin=fin)

    async def ping(self) -> float:
        return await self.session.ping()

    @staticmethod
    async def read_all(stream: SpdyStream) -> bytes:
        chunks = []
        while chunk := await stream.read():
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        await self.session.close()
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    async def __aenter__(self) -> SpdyClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


async def _read_response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    length = int(headers.get("content-length", "0") or 0)
    with contextlib.suppress(asyncio.IncompleteReadError):
        return await reader.readexactly(length)
    return b""
