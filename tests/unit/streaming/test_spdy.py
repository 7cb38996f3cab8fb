"""SpdySession over an in-memory pair: a client session (as kubectl's) against the server session."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from qmprt.streaming.spdy import SpdySession, SpdyStream, SpdyStreamClosed
from qmprt.streaming.spdy_frames import (
    CANCEL, DEFAULT_WINDOW, FLAG_FIN, FLOW_CONTROL_ERROR, GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, REFUSED_STREAM,
    SETTINGS_INITIAL_WINDOW_SIZE, DataFrame, Frame, FrameCodec, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame,
    Setting, SettingsFrame, SynReplyFrame, SynStreamFrame, WindowUpdateFrame,
)


class Wire:
    """Bytes one session wrote, delivered to the other on the next loop turn, and decoded for asserts."""

    def __init__(self) -> None:
        self.deliver: Callable[[bytes], Any] = lambda data: None
        self.frames: list[Frame] = []
        self._codec = FrameCodec()

    def write(self, data: bytes) -> None:
        self.frames += self._codec.feed(data)
        asyncio.get_running_loop().call_soon(self.deliver, data)

    def of_type(self, kind: type) -> list[Any]:
        return [frame for frame in self.frames if isinstance(frame, kind)]

    def data_bytes(self) -> int:
        return sum(len(frame.data) for frame in self.of_type(DataFrame))


class NoCreditSession(SpdySession):
    """A client like Go's spdystream: never sends WINDOW_UPDATE, ignores the server's window."""

    def send(self, frame: Frame) -> None:
        if not isinstance(frame, WindowUpdateFrame):
            super().send(frame)


class Pair:
    def __init__(self, *, spdystream_like: bool = False, **server_options: Any) -> None:
        self.to_client, self.to_server = Wire(), Wire()
        self.server = SpdySession(self.to_client.write, **server_options)
        if spdystream_like:  # which buffers whatever comes, without bound
            self.client: SpdySession = NoCreditSession(self.to_server.write, client=True, peer_flow_control=False,
                                                       window_size=1 << 24)
        else:
            self.client = SpdySession(self.to_server.write, client=True, peer_flow_control=True)
        self.to_client.deliver = self.client.receive
        self.to_server.deliver = self.server.parser.feed_data
        if not spdystream_like:  # a SPDY/3.1 client announces its window
            self.client.send(SettingsFrame((Setting(SETTINGS_INITIAL_WINDOW_SIZE, DEFAULT_WINDOW),)))

    async def open(self, kind: str, *, fin: bool = False) -> tuple[SpdyStream, SpdyStream]:
        """A client stream and the server's end of it."""
        client_end = await self.client.open_stream({"streamType": kind}, fin=fin)
        server_end = await self.server.accept_stream()
        assert server_end is not None and server_end.stream_id == client_end.stream_id
        return client_end, server_end


async def settle(turns: int = 20) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def read_all(stream: SpdyStream) -> bytes:
    chunks = []
    while chunk := await stream.read():
        chunks.append(chunk)
    return b"".join(chunks)


async def test_exec_streams_carry_data_both_ways() -> None:
    pair = Pair()
    client_error, server_error = await pair.open("error", fin=True)
    client_stdout, server_stdout = await pair.open("stdout", fin=True)
    client_stdin, server_stdin = await pair.open("stdin")
    assert [s.headers["streamtype"] for s in (server_error, server_stdout, server_stdin)] == ["error", "stdout", "stdin"]
    assert [f.stream_id for f in pair.to_client.of_type(SynReplyFrame)] == [1, 3, 5]
    assert await server_stdout.read() == b""  # opened with FIN: nothing comes from the client
    await client_stdin.write(b"echo hi\n")
    await client_stdin.close()
    assert await read_all(server_stdin) == b"echo hi\n"
    await server_stdout.write(b"hi\n")
    await server_stdout.close()
    await server_error.write(b'{"status":"Success"}')
    await server_error.close()
    assert await read_all(client_stdout) == b"hi\n"
    assert await read_all(client_error) == b'{"status":"Success"}'
    assert client_stdout.remote_closed and not client_stdout.is_reset


async def test_a_client_reset_ends_the_servers_stream() -> None:
    pair = Pair()
    client_stdin, server_stdin = await pair.open("stdin")
    reader = asyncio.create_task(server_stdin.read())
    await client_stdin.reset()
    assert await reader == b""
    assert server_stdin.reset_status == CANCEL
    with pytest.raises(SpdyStreamClosed):
        await server_stdin.write(b"late")


async def test_a_server_reset_reaches_the_client() -> None:
    pair = Pair()
    client_stdout, server_stdout = await pair.open("stdout", fin=True)
    await server_stdout.reset(FLOW_CONTROL_ERROR)
    assert await client_stdout.read() == b""
    assert client_stdout.reset_status == FLOW_CONTROL_ERROR
    assert pair.to_client.of_type(RstStreamFrame) == [RstStreamFrame(1, FLOW_CONTROL_ERROR)]


async def test_pings_are_answered() -> None:
    pair = Pair()
    assert await asyncio.wait_for(pair.client.ping(), 1) >= 0
    assert pair.to_client.of_type(PingFrame) == [PingFrame(1)]


async def test_reading_grants_window_to_a_client_that_waits_for_it() -> None:
    pair = Pair()
    client_stdin, server_stdin = await pair.open("stdin")
    payload = bytes(range(256)) * 1024  # 256 KiB, four windows
    writer = asyncio.create_task(client_stdin.write(payload))
    await settle()
    assert not writer.done() and pair.to_server.data_bytes() == DEFAULT_WINDOW  # stalled on the window
    received = b""
    while len(received) < len(payload):
        received += await asyncio.wait_for(server_stdin.read(), 1)
    await writer
    assert received == payload
    updates = pair.to_client.of_type(WindowUpdateFrame)
    assert {u.stream_id for u in updates} == {0, 1}
    assert sum(u.delta for u in updates if u.stream_id == 1) >= len(payload) - DEFAULT_WINDOW


async def test_the_server_writes_only_as_the_client_grants_window() -> None:
    pair = Pair()
    client_stdout, server_stdout = await pair.open("stdout", fin=True)
    payload = b"x" * (200 * 1024)
    writer = asyncio.create_task(server_stdout.write(payload))
    await settle()
    assert not writer.done() and pair.to_client.data_bytes() == DEFAULT_WINDOW
    received = b""
    while len(received) < len(payload):
        received += await asyncio.wait_for(client_stdout.read(), 1)
    await writer
    assert received == payload


async def test_a_smaller_initial_window_from_settings_is_kept() -> None:
    pair = Pair()
    pair.client.send(SettingsFrame((Setting(SETTINGS_INITIAL_WINDOW_SIZE, 1000),)))
    _, server_stdout = await pair.open("stdout", fin=True)
    writer = asyncio.create_task(server_stdout.write(b"y" * 5000))
    await settle()
    assert pair.to_client.data_bytes() == 1000 and not writer.done()
    writer.cancel()


async def test_a_spdystream_like_client_does_not_stall_the_server() -> None:
    pair = Pair(spdystream_like=True)
    client_stdout, server_stdout = await pair.open("stdout", fin=True)
    payload = b"z" * (1 << 20)
    await asyncio.wait_for(server_stdout.write(payload), 1)  # no WINDOW_UPDATE ever comes
    await server_stdout.close()
    assert await read_all(client_stdout) == payload


async def test_unread_data_pauses_reading_when_the_client_ignores_the_window() -> None:
    calls: list[str] = []
    pair = Pair(spdystream_like=True, pause_reading=lambda: calls.append("pause"),
                resume_reading=lambda: calls.append("resume"))
    client_stdin, server_stdin = await pair.open("stdin")
    await client_stdin.write(b"a" * (3 * DEFAULT_WINDOW))
    await settle()
    assert calls == ["pause"]
    while server_stdin.buffered > DEFAULT_WINDOW:
        await server_stdin.read()
    assert calls == ["pause", "resume"]


async def test_unread_data_resets_the_stream_without_a_way_to_pause() -> None:
    pair = Pair(spdystream_like=True)
    client_stdin, server_stdin = await pair.open("stdin")
    await client_stdin.write(b"a" * (5 * DEFAULT_WINDOW))
    await settle()
    assert server_stdin.reset_status == FLOW_CONTROL_ERROR and server_stdin.buffered == 0
    assert await client_stdin.read() == b"" and client_stdin.reset_status == FLOW_CONTROL_ERROR


async def test_goaway_from_the_client_ends_accept_stream() -> None:
    pair = Pair()
    client_stdin, server_stdin = await pair.open("stdin")
    accepting = asyncio.create_task(pair.server.accept_stream())
    await pair.client.close()
    assert await asyncio.wait_for(accepting, 1) is None
    assert pair.server.goaway_received
    assert pair.to_server.of_type(GoAwayFrame) == [GoAwayFrame(0, GOAWAY_OK)]


async def test_server_close_says_goaway_once_and_ends_every_stream() -> None:
    pair = Pair()
    _, server_stdin = await pair.open("stdin")
    await pair.server.close()
    await pair.server.close()
    assert pair.to_client.of_type(GoAwayFrame) == [GoAwayFrame(1, GOAWAY_OK)]
    assert await pair.server.accept_stream() is None and pair.server.closed.is_set()
    assert await server_stdin.read() == b""
    with pytest.raises(SpdyStreamClosed):
        await server_stdin.write(b"x")
    await settle()
    assert pair.client.goaway_received
    with pytest.raises(SpdyStreamClosed):
        await pair.client.open_stream({"streamType": "stdin"})


async def test_connection_loss_ends_the_session_but_keeps_what_was_sent() -> None:
    pair = Pair()
    client_stdin, server_stdin = await pair.open("stdin")
    await client_stdin.write(b"last words")
    await settle()
    pair.server.parser.feed_eof()
    assert await pair.server.accept_stream() is None
    assert await read_all(server_stdin) == b"last words"


async def test_a_protocol_error_sends_goaway_and_ends_the_parser() -> None:
    pair = Pair()
    _, server_stdin = await pair.open("stdin")
    assert pair.server.parser.feed_data(b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01") == (True, b"")
    assert pair.to_client.of_type(GoAwayFrame) == [GoAwayFrame(1, GOAWAY_PROTOCOL_ERROR)]
    assert pair.server.closed.is_set() and await server_stdin.read() == b""


async def test_stream_ids_must_grow() -> None:
    wire = FrameCodec()
    server = SpdySession(lambda data: None)
    server.receive(wire.encode(SynStreamFrame(3, ())))
    assert server.receive(wire.encode(SynStreamFrame(1, ()))) is True  # went backwards: session error


async def test_repeated_header_values_are_joined_as_on_the_wire() -> None:
    server = SpdySession(lambda data: None)
    headers = (("streamtype", "data"), ("port", "80"), ("port", "81\x0082"), ("requestid", "7"))
    server.receive(FrameCodec().encode(SynStreamFrame(1, headers)))
    stream = await server.accept_stream()
    assert stream is not None
    assert stream.headers == {"streamtype": "data", "port": "80\x0081\x0082", "requestid": "7"}
    assert stream.values("port") == ["80", "81", "82"]


async def test_streams_past_the_limit_are_refused() -> None:
    out = Wire()
    server = SpdySession(out.write, max_streams=2)
    codec = FrameCodec()
    server.receive(b"".join(codec.encode(SynStreamFrame(i, ())) for i in (1, 3, 5)))
    assert out.of_type(RstStreamFrame) == [RstStreamFrame(5, REFUSED_STREAM)]
    assert [f.stream_id for f in out.of_type(SynReplyFrame)] == [1, 3]


async def test_data_after_fin_resets_the_stream() -> None:
    out = Wire()
    server = SpdySession(out.write)
    codec = FrameCodec()
    server.receive(codec.encode(SynStreamFrame(1, (), FLAG_FIN)) + codec.encode(DataFrame(1, b"late")))
    assert out.of_type(RstStreamFrame)[0].stream_id == 1


async def test_many_streams_at_once() -> None:
    pair = Pair()
    ends = [await pair.open("data") for _ in range(100)]
    for client_end, server_end in ends:
        await server_end.write(b"%d" % server_end.stream_id)
        await server_end.close()
    for client_end, _ in ends:
        assert await read_all(client_end) == b"%d" % client_end.stream_id


async def test_an_unread_stream_does_not_block_the_others() -> None:
    pair = Pair()
    client_stdin, server_stdin = await pair.open("stdin")
    client_resize, server_resize = await pair.open("resize")
    stuck = asyncio.create_task(client_stdin.write(b"s" * (2 * DEFAULT_WINDOW)))  # nobody reads stdin
    await settle()
    await asyncio.wait_for(client_resize.write(b'{"Width":80,"Height":24}'), 1)
    assert await asyncio.wait_for(server_resize.read(), 1) == b'{"Width":80,"Height":24}'
    assert not stuck.done() and server_stdin.buffered == DEFAULT_WINDOW
    stuck.cancel()


async def test_headers_frames_add_headers_and_may_end_the_client_half() -> None:
    out = Wire()
    server = SpdySession(out.write)
    codec = FrameCodec()
    server.receive(codec.encode(SynStreamFrame(1, (("streamtype", "data"),))))
    stream = await server.accept_stream()
    assert stream is not None
    server.receive(codec.encode(HeadersFrame(1, (("port", "80"),), FLAG_FIN)) + codec.encode(DataFrame(7, b"?")))
    assert stream.headers == {"streamtype": "data", "port": "80"} and await stream.read() == b""
    assert out.of_type(RstStreamFrame) == []  # DATA for a stream that never was is dropped


async def test_a_refused_stream_raises_on_the_client() -> None:
    pair = Pair(max_streams=1)
    await pair.open("stdin")
    with pytest.raises(SpdyStreamClosed):
        await asyncio.wait_for(pair.client.open_stream({"streamType": "stdout"}), 1)
