"""One SPDY stream as the application sees it; the session (``spdy.SpdySession``) owns the wire.

A stream's state: ``remote_closed`` once the peer's FIN arrived (or the stream or session ended),
``local_closed`` once ours went out, ``reset_status`` once either side sent RST_STREAM. Data the peer
sent before its FIN stays readable; a reset drops it.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

from qmprt import errors
from qmprt.streaming.spdy_frames import CANCEL, FLAG_FIN, DataFrame, Frame, Headers, RstStreamFrame

CHUNK_SIZE = 32 * 1024


class StreamOwner(Protocol):
    """What a stream needs of its session."""

    closed: asyncio.Event

    def send(self, frame: Frame) -> None: ...
    async def drain_writes(self) -> None: ...
    async def reserve_window(self, stream: SpdyStream, wanted: int) -> int: ...
    def stream_consumed(self, stream: SpdyStream, size: int) -> None: ...
    def stream_reset(self, stream: SpdyStream, status: int) -> None: ...
    def forget_if_done(self, stream: SpdyStream) -> None: ...


class SpdyStreamClosed(errors.FailedPrecondition):
    """A write to a stream whose sending half is closed, reset, or whose session has ended."""


class SpdyStream:
    """One stream: ``read`` what the peer sends, ``write`` to it, ``close`` our half, or ``reset``.

    ``headers`` holds the SYN_STREAM's (and later HEADERS frames') pairs, names lower-case; a name
    with several values keeps them joined by NUL as they came on the wire (``values`` splits them).
    """

    def __init__(self, session: StreamOwner, stream_id: int, headers: Headers, *, send_window: int) -> None:
        self._session = session
        self.stream_id = stream_id
        self.headers: dict[str, str] = {}
        self.remote_closed = False
        self.local_closed = False
        self.reset_status: int | None = None
        self.send_window = send_window
        self._chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self._unacknowledged = 0
        self._readable = asyncio.Event()
        self.reply: asyncio.Future[None] | None = None
        self.add_headers(headers)

    @property
    def is_reset(self) -> bool:
        return self.reset_status is not None

    def values(self, name: str) -> list[str]:
        value = self.headers.get(name.lower())
        return [] if value is None else value.split("\x00")

    def add_headers(self, headers: Headers) -> None:
        for name, value in headers:
            known = self.headers.get(name)
            self.headers[name] = value if known is None else f"{known}\x00{value}"

    async def read(self) -> bytes:
        """The next chunk the peer sent; b"" once it half-closed (FIN), or the stream was reset."""
        while not self._chunks and not (self.remote_closed or self.is_reset):
            self._readable.clear()
            await self._readable.wait()
        if not self._chunks:
            return b""
        chunk = self._chunks.popleft()
        self.buffered -= len(chunk)
        self._session.stream_consumed(self, len(chunk))
        return chunk

    async def write(self, data: bytes) -> None:
        """Send ``data`` as DATA frames of at most CHUNK_SIZE, within the peer's window."""
        view = memoryview(data)
        while view:
            size = await self._session.reserve_window(self, min(len(view), CHUNK_SIZE))
            self._session.send(DataFrame(self.stream_id, bytes(view[:size])))
            view = view[size:]
            await self._session.drain_writes()

    async def close(self) -> None:
        """Close our half (an empty DATA frame with FIN); reading goes on until the peer's FIN."""
        if self.local_closed or self.is_reset or self._session.closed.is_set():
            return
        self.local_closed = True
        self._session.send(DataFrame(self.stream_id, b"", FLAG_FIN))
        self._session.forget_if_done(self)
        await self._session.drain_writes()

    async def reset(self, status: int = CANCEL) -> None:
        """End both halves now with RST_STREAM; unread data is dropped."""
        if self.is_reset or (self.local_closed and self.remote_closed):
            return
        if not self._session.closed.is_set():
            self._session.send(RstStreamFrame(self.stream_id, status))
        self._session.stream_reset(self, status)

    def check_writable(self) -> None:
        if self.is_reset or self.local_closed or self._session.closed.is_set():
            raise SpdyStreamClosed(f"SPDY stream {self.stream_id} cannot be written: it is closed or reset")

    def deliver(self, data: bytes, fin: bool) -> None:
        if data:
            self._chunks.append(data)
            self.buffered += len(data)
        self.remote_closed = self.remote_closed or fin
        self._readable.set()

    def end(self, status: int | None) -> None:
        """Stop both halves: reset (``status`` given) or the session ended."""
        if status is not None and self.reset_status is None:
            self.reset_status = status
            self._drop_buffer()
        self.remote_closed = self.local_closed = True
        self._readable.set()
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(SpdyStreamClosed(f"SPDY stream {self.stream_id} was refused or reset"))

    def _drop_buffer(self) -> None:
        self.buffered = 0
        self._chunks.clear()

    def take_credit(self, size: int, threshold: int) -> int:
        """Count ``size`` bytes read; return the credit to grant once it reaches ``threshold``."""
        self._unacknowledged += size
        if self._unacknowledged < threshold or self.remote_closed:
            return 0
        credit, self._unacknowledged = self._unacknowledged, 0
        return credit
