"""A SPDY/3.1 session over one upgraded HTTP connection: the server side kubelet's and crictl's
remotecommand and portforward clients (Go, moby/spdystream) talk to, and a client side for tests.

Use from an aiohttp handler, after answering 101 Switching Protocols (``StreamResponse(status=101,
...)`` and ``prepare``)::

    transport = request.transport
    session = SpdySession(transport.write, drain=request.protocol._drain_helper,
                          pause_reading=transport.pause_reading, resume_reading=transport.resume_reading)
    request.protocol.set_parser(session.parser)
    while (stream := await session.accept_stream()) is not None:
        ...  # stream.headers["streamtype"] is "stdin", "stdout", "error", "data", ...
    await session.close()
    transport.close()   # the session says GOAWAY; the connection is the handler's to close

aiohttp's HTTP parser takes only ``Upgrade: websocket`` for an upgrade, so for SPDY/3.1 its protocol
never counts as upgraded: its ``pause_reading`` would fail (pause the transport instead), and bytes
arriving before ``set_parser`` would be parsed as HTTP (Go's client sends none before the 101).

Every SYN_STREAM is answered with SYN_REPLY at once (spdystream waits for it before writing), PINGs
are echoed, RST_STREAM and GOAWAY end what they name.

Flow control, and what Go's spdystream really does. SPDY/3.1 has a window per stream and one per
session, 64 KiB at first. Inbound, this side grants credit (WINDOW_UPDATE) only for bytes the
application has read, so a peer that keeps to its window never makes us buffer more than
``window_size`` per stream. spdystream, however, neither sends WINDOW_UPDATE nor reads ours: it
writes as fast as it can and ignores the window. So the bound is kept a second way: a stream
holding more than ``window_size`` unread pauses the connection's reading (``pause_reading``) until
the application catches up; without those callables such a stream is reset with FLOW_CONTROL_ERROR
once it holds four windows. Outbound, ``peer_flow_control`` says whether the peer's window is
obeyed: True always, False never, None (the default) once the peer has shown it keeps windows by
sending WINDOW_UPDATE or SETTINGS. Until then it is taken for spdystream, whose window never
reopens: waiting on it would stall every exec after 64 KiB of output.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from qmprt.streaming.spdy_frames import (
    CANCEL, DEFAULT_WINDOW, FLAG_FIN, FLAG_UNIDIRECTIONAL, FLOW_CONTROL_ERROR, GOAWAY_OK,
    GOAWAY_PROTOCOL_ERROR, MAX_WINDOW, REFUSED_STREAM, SETTINGS_INITIAL_WINDOW_SIZE,
    STREAM_ALREADY_CLOSED, DataFrame, Frame, FrameCodec, GoAwayFrame, HeadersFrame, PingFrame,
    RstStreamFrame, SettingsFrame, SpdyProtocolError, SynReplyFrame, SynStreamFrame, WindowUpdateFrame,
)
from qmprt.streaming.spdy_stream import SpdyStream, SpdyStreamClosed

__all__ = ["CANCEL", "SpdyProtocolError", "SpdySession", "SpdyStream", "SpdyStreamClosed"]

log = logging.getLogger(__name__)

OVERRUN_FACTOR = 4


class _SessionParser:
    """What aiohttp's ``RequestHandler.set_parser`` takes: ``feed_data`` returns (eof, tail)."""

    def __init__(self, session: SpdySession) -> None:
        self._session = session

    def feed_data(self, data: bytes | bytearray | memoryview) -> tuple[bool, bytes]:
        return self._session.receive(bytes(data)), b""

    def feed_eof(self) -> None:
        self._session.connection_lost()


class SpdySession:
    """One SPDY/3.1 connection; see the module docstring. ``client`` picks the stream-id parity."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        drain: Callable[[], Awaitable[None]] | None = None,
        pause_reading: Callable[[], None] | None = None,
        resume_reading: Callable[[], None] | None = None,
        peer_flow_control: bool | None = None,
        window_size: int = DEFAULT_WINDOW,
        max_streams: int = 256,
        client: bool = False,
        codec: FrameCodec | None = None,
    ) -> None:
        self._write, self._drain = write, drain
        self._pause, self._resume, self._paused = pause_reading, resume_reading, False
        self._peer_flow_control = peer_flow_control
        self._window_size, self._max_streams, self._client = window_size, max_streams, client
        self._codec = codec or FrameCodec()
        self.parser = _SessionParser(self)
        self.closed = asyncio.Event()
        self._streams: dict[int, SpdyStream] = {}
        self._incoming: collections.deque[SpdyStream] = collections.deque()
        self._changed = asyncio.Event()
        self._next_stream_id = 1 if client else 2
        self._next_ping_id = 1 if client else 2
        self._last_peer_stream_id = 0
        self._peer_initial_window = DEFAULT_WINDOW
        self._session_send_window = DEFAULT_WINDOW
        self._session_unacknowledged = 0
        self._peer_keeps_windows = False
        self._pings: dict[int, asyncio.Future[None]] = {}
        self.goaway_received = False
        self._goaway_sent = False

    # -- the application's side -------------------------------------------------------------------

    async def accept_stream(self) -> SpdyStream | None:
        """The next stream the peer opened; None once the session ended or the peer sent GOAWAY."""
        while True:
            if self._incoming and not self.closed.is_set():
                return self._incoming.popleft()
            if self.closed.is_set() or self.goaway_received:
                return None
            self._changed.clear()
            await self._changed.wait()

    async def open_stream(self, headers: Mapping[str, str], *, fin: bool = False) -> SpdyStream:
        """Open a stream (SYN_STREAM) and wait for its SYN_REPLY; for the client side."""
        if self.closed.is_set() or self.goaway_received or self._goaway_sent:
            raise SpdyStreamClosed("the SPDY session is closing: no new streams")
        stream_id, self._next_stream_id = self._next_stream_id, self._next_stream_id + 2
        stream = SpdyStream(self, stream_id, (), send_window=self._peer_initial_window)
        stream.local_closed = fin
        stream.reply = asyncio.get_running_loop().create_future()
        self._streams[stream_id] = stream
        self.send(SynStreamFrame(stream_id, tuple(headers.items()), FLAG_FIN if fin else 0))
        await stream.reply
        return stream

    async def ping(self) -> float:
        """Send a PING and return the seconds until its echo."""
        ping_id, self._next_ping_id = self._next_ping_id, self._next_ping_id + 2
        answered = self._pings[ping_id] = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        self.send(PingFrame(ping_id))
        await answered
        return time.monotonic() - started

    async def close(self) -> None:
        """Send GOAWAY and end every stream; the caller closes the connection. Idempotent."""
        if self.closed.is_set():
            return
        self._send_goaway(GOAWAY_OK)
        self._finish()

    async def wait_closed(self) -> None:
        await self.closed.wait()

    # -- bytes in ---------------------------------------------------------------------------------

    def receive(self, data: bytes) -> bool:
        """Take bytes from the connection; True once the session is over (the parser's eof)."""
        if self.closed.is_set():
            return True
        try:
            for frame in self._codec.feed(data):
                self._dispatch(frame)
        except SpdyProtocolError as err:
            log.warning("SPDY session ends on a protocol error: %s", err)
            self._send_goaway(GOAWAY_PROTOCOL_ERROR)
            self._finish()
        return self.closed.is_set()

    def connection_lost(self) -> None:
        self._finish()

    def _dispatch(self, frame: Frame) -> None:
        match frame:
            case DataFrame():
                self._on_data(frame)
            case SynStreamFrame():
                self._on_syn_stream(frame)
            case SynReplyFrame() | HeadersFrame():
                self._on_reply_or_headers(frame)
            case RstStreamFrame():
                stream = self._streams.get(frame.stream_id)
                if stream is not None:
                    self.stream_reset(stream, frame.status)
            case SettingsFrame():
                self._on_settings(frame)
            case PingFrame():
                self._on_ping(frame)
            case GoAwayFrame():
                self._on_goaway(frame)
            case WindowUpdateFrame():
                self._on_window_update(frame)

    def _peer_parity(self, stream_id: int) -> bool:
        return stream_id % 2 == (0 if self._client else 1)

    def _on_syn_stream(self, frame: SynStreamFrame) -> None:
        if not self._peer_parity(frame.stream_id) or frame.stream_id <= self._last_peer_stream_id:
            raise SpdyProtocolError(f"SYN_STREAM {frame.stream_id} out of order or of this side's parity")
        self._last_peer_stream_id = frame.stream_id
        if self._goaway_sent or len(self._streams) >= self._max_streams:
            self.send(RstStreamFrame(frame.stream_id, REFUSED_STREAM))
            return
        stream = SpdyStream(self, frame.stream_id, frame.headers, send_window=self._peer_initial_window)
        stream.remote_closed = bool(frame.flags & FLAG_FIN)
        stream.local_closed = bool(frame.flags & FLAG_UNIDIRECTIONAL)
        self._streams[frame.stream_id] = stream
        if not stream.local_closed:
            self.send(SynReplyFrame(frame.stream_id, ()))
        self._incoming.append(stream)
        self._changed.set()

    def _on_reply_or_headers(self, frame: SynReplyFrame | HeadersFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            return
        stream.add_headers(frame.headers)
        if isinstance(frame, SynReplyFrame) and stream.reply is not None and not stream.reply.done():
            stream.reply.set_result(None)
        if frame.flags & FLAG_FIN:
            stream.deliver(b"", True)
            self.forget_if_done(stream)

    def _on_data(self, frame: DataFrame) -> None:
        # The session window is credited on arrival: each stream's buffer has its own bound, and
        # crediting on read would let one unread stream (stdin) block all others (resize).
        self.credit_session(len(frame.data))
        stream = self._streams.get(frame.stream_id)
        if stream is None or stream.is_reset:
            return
        if stream.remote_closed:
            self.send(RstStreamFrame(stream.stream_id, STREAM_ALREADY_CLOSED))
            self.stream_reset(stream, STREAM_ALREADY_CLOSED)
            return
        stream.deliver(frame.data, bool(frame.flags & FLAG_FIN))
        if stream.buffered > self._window_size:
            self._overrun(stream)
        self.forget_if_done(stream)

    def _overrun(self, stream: SpdyStream) -> None:
        """The peer wrote past our window (spdystream does): pause reading, or reset if we cannot."""
        if self._pause is not None:
            if not self._paused:
                self._paused = True
                self._pause()
        elif stream.buffered > OVERRUN_FACTOR * self._window_size:
            log.warning("SPDY stream %d overran its window to %d bytes; reset", stream.stream_id, stream.buffered)
            self.send(RstStreamFrame(stream.stream_id, FLOW_CONTROL_ERROR))
            self.stream_reset(stream, FLOW_CONTROL_ERROR)

    def _on_settings(self, frame: SettingsFrame) -> None:
        for setting in frame.settings:
            if setting.id != SETTINGS_INITIAL_WINDOW_SIZE:
                continue
            if setting.value > MAX_WINDOW:
                raise SpdyProtocolError(f"SETTINGS initial window {setting.value} is too large")
            delta, self._peer_initial_window = setting.value - self._peer_initial_window, setting.value
            for stream in self._streams.values():
                stream.send_window += delta
            self._peer_keeps_windows = True
        self._changed.set()

    def _on_ping(self, frame: PingFrame) -> None:
        if self._peer_parity(frame.ping_id):
            self.send(frame)
            return
        answered = self._pings.pop(frame.ping_id, None)
        if answered is not None and not answered.done():
            answered.set_result(None)

    def _on_goaway(self, frame: GoAwayFrame) -> None:
        self.goaway_received = True
        for stream in list(self._streams.values()):
            if not self._peer_parity(stream.stream_id) and stream.stream_id > frame.last_good_stream_id:
                self.stream_reset(stream, REFUSED_STREAM)
        self._changed.set()

    def _on_window_update(self, frame: WindowUpdateFrame) -> None:
        self._peer_keeps_windows = True
        if frame.stream_id == 0:
            self._session_send_window = min(self._session_send_window + frame.delta, MAX_WINDOW)
        elif (stream := self._streams.get(frame.stream_id)) is not None:
            stream.send_window += frame.delta
            if stream.send_window > MAX_WINDOW:
                self.send(RstStreamFrame(stream.stream_id, FLOW_CONTROL_ERROR))
                self.stream_reset(stream, FLOW_CONTROL_ERROR)
        self._changed.set()

    # -- bookkeeping ------------------------------------------------------------------------------

    def stream_reset(self, stream: SpdyStream, status: int) -> None:
        stream.end(status)
        self._streams.pop(stream.stream_id, None)
        self._changed.set()
        self._resume_if_drained()

    def forget_if_done(self, stream: SpdyStream) -> None:
        """Drop a stream both halves of which are closed once nothing is left to read."""
        if stream.local_closed and stream.remote_closed and not stream.buffered:
            self._streams.pop(stream.stream_id, None)

    def stream_consumed(self, stream: SpdyStream, size: int) -> None:
        credit = stream.take_credit(size, self._window_size // 2)
        if credit and stream.stream_id in self._streams and not self.closed.is_set():
            self.send(WindowUpdateFrame(stream.stream_id, credit))
        self.forget_if_done(stream)
        self._resume_if_drained()

    def credit_session(self, size: int) -> None:
        self._session_unacknowledged += size
        if self._session_unacknowledged >= self._window_size // 2 and not self.closed.is_set():
            self.send(WindowUpdateFrame(0, self._session_unacknowledged))
            self._session_unacknowledged = 0

    def _resume_if_drained(self) -> None:
        if not self._paused or any(s.buffered > self._window_size for s in self._streams.values()):
            return
        self._paused = False
        if self._resume is not None:
            self._resume()

    def _keeps_peer_window(self) -> bool:
        if self._peer_flow_control is None:
            return self._peer_keeps_windows
        return self._peer_flow_control

    async def reserve_window(self, stream: SpdyStream, wanted: int) -> int:
        """Wait until the peer's windows allow some bytes; take up to ``wanted`` of them."""
        while True:
            stream.check_writable()
            available = wanted
            if self._keeps_peer_window():
                available = min(wanted, stream.send_window, self._session_send_window)
            if available > 0:
                stream.send_window -= available
                self._session_send_window -= available
                return available
            self._changed.clear()
            await self._changed.wait()

    def send(self, frame: Frame) -> None:
        self._write(self._codec.encode(frame))

    async def drain_writes(self) -> None:
        """Wait while the connection's write buffer is full; a lost connection ends the session."""
        if self._drain is None or self.closed.is_set():
            return
        try:
            await self._drain()
        except ConnectionError as err:
            self._finish()
            raise SpdyStreamClosed("the SPDY connection was lost") from err

    def _send_goaway(self, status: int) -> None:
        if not self._goaway_sent:
            self._goaway_sent = True
            self.send(GoAwayFrame(self._last_peer_stream_id, status))

    def _finish(self) -> None:
        """End the session: every stream ends, every waiter wakes. Safe to call twice."""
        if self.closed.is_set():
            return
        self.closed.set()
        for stream in self._streams.values():
            stream.end(None)
        self._streams.clear()
        for answered in self._pings.values():
            if not answered.done():
                answered.set_exception(SpdyStreamClosed("the SPDY session ended before the PING's echo"))
        self._pings.clear()
        self._changed.set()
        if self._paused and self._resume is not None:
            self._paused = False
            self._resume()
