"""SPDY/3.1 framing: the frames, their byte layout, and the stateful header-block compression.

Pure and I/O-free: :class:`FrameCodec` turns frames into bytes (``encode``) and bytes into frames
(``feed``, incremental: it keeps a partial frame until the rest arrives). One codec serves one
connection; it holds the connection's two zlib streams, one per direction, because SPDY's header
compression is a single deflate stream across every header block of a connection, primed with the
SPDY/3 dictionary and sync-flushed after each block. Losing a block therefore breaks every later one:
a codec that raised :class:`SpdyProtocolError` must not be fed again.

The layout (draft-mbelshe-httpbis-spdy-00, "SPDY Protocol - Draft 3.1")::

    control frame: |1| version(15) | type(16) | flags(8) | length(24) | payload
    data frame:    |0| stream-id(31)           | flags(8) | length(24) | data
    header block:  count(32), then per pair: name-len(32) name, value-len(32) value

A value holding several values joins them with NUL, as Go's spdystream writes them.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from qmprt import errors
from qmprt.streaming.spdy_dictionary import DICTIONARY

VERSION = 3

TYPE_SYN_STREAM = 1
TYPE_SYN_REPLY = 2
TYPE_RST_STREAM = 3
TYPE_SETTINGS = 4
TYPE_PING = 6
TYPE_GOAWAY = 7
TYPE_HEADERS = 8
TYPE_WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01

# RST_STREAM status codes
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
FRAME_TOO_LARGE = 11

# GOAWAY status codes
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

SETTINGS_MAX_CONCURRENT_STREAMS = 4
SETTINGS_INITIAL_WINDOW_SIZE = 7

DEFAULT_WINDOW = 64 * 1024
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
MAX_FRAME_LENGTH = 2**24 - 1
MAX_HEADER_BLOCK = 256 * 1024
MAX_HEADER_COUNT = 1024

_HEADER = struct.Struct(">II")

class SpdyProtocolError(errors.InvalidArgument):
    """The peer sent bytes that are not SPDY/3.1, or broke a bound this side keeps."""


Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes
    flags: int = 0


@dataclass(frozen=True)
class SynStreamFrame:
    stream_id: int
    headers: Headers
    flags: int = 0
    associated_stream_id: int = 0
    priority: int = 0
    slot: int = 0


@dataclass(frozen=True)
class SynReplyFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class RstStreamFrame:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Setting:
    id: int
    value: int
    flags: int = 0


@dataclass(frozen=True)
class SettingsFrame:
    settings: tuple[Setting, ...] = ()
    flags: int = 0


@dataclass(frozen=True)
class PingFrame:
    ping_id: int


@dataclass(frozen=True)
class GoAwayFrame:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass(frozen=True)
class WindowUpdateFrame:
    stream_id: int
    delta: int


Frame = (
    DataFrame | SynStreamFrame | SynReplyFrame | HeadersFrame | RstStreamFrame | SettingsFrame
    | PingFrame | GoAwayFrame | WindowUpdateFrame
)


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block; names lower-cased as SPDY/3 requires."""
    parts = [struct.pack(">I", len(headers))]
    for name, value in headers:
        name_bytes, value_bytes = name.lower().encode(), value.encode()
        parts += [struct.pack(">I", len(name_bytes)), name_bytes, struct.pack(">I", len(value_bytes)), value_bytes]
    return b"".join(parts)


def decode_header_block(block: bytes, max_count: int = MAX_HEADER_COUNT) -> Headers:
    """Parse an uncompressed block. A name that comes twice is kept twice; callers merge."""
    reader = _Reader(block)
    count = reader.u32()
    if count > max_count:
        raise SpdyProtocolError(f"header block has {count} pairs, more than {max_count}")
    pairs = []
    for _ in range(count):
        name = reader.text(reader.u32())
        if not name or name != name.lower():
            raise SpdyProtocolError(f"header name {name!r} is empty or not lower-case")
        pairs.append((name, reader.text(reader.u32())))
    if reader.remaining():
        raise SpdyProtocolError("bytes after the last header pair")
    return tuple(pairs)


class _Reader:
    """Bounds-checked reads from one frame's payload."""

    def __init__(self, payload: bytes) -> None:
        self._payload = payload
        self._offset = 0

    def take(self, size: int) -> bytes:
        if self._offset + size > len(self._payload):
            raise SpdyProtocolError("frame payload shorter than its fields")
        chunk = self._payload[self._offset:self._offset + size]
        self._offset += size
        return chunk

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def text(self, size: int) -> str:
        try:
            return self.take(size).decode()
        except UnicodeDecodeError as err:
            raise SpdyProtocolError("header text is not UTF-8") from err

    def rest(self) -> bytes:
        return self.take(len(self._payload) - self._offset)

    def remaining(self) -> int:
        return len(self._payload) - self._offset


@dataclass
class FrameCodec:
    """One connection's framing in both directions (see the module docstring).

    ``max_frame_length`` bounds any frame's payload, ``max_header_block`` a decompressed header block
    (and a control frame's payload), ``max_header_count`` the pairs in one block.
    """

    max_frame_length: int = MAX_FRAME_LENGTH
    max_header_block: int = MAX_HEADER_BLOCK
    max_header_count: int = MAX_HEADER_COUNT
    _buffer: bytearray = field(default_factory=bytearray)
    _compressor: zlib._Compress = field(
        default_factory=lambda: zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 9, zdict=DICTIONARY)
    )
    _decompressor: zlib._Decompress = field(default_factory=lambda: zlib.decompressobj(zdict=DICTIONARY))

    # -- encoding ---------------------------------------------------------------------------------

    def compress_headers(self, headers: Headers) -> bytes:
        block = encode_header_block(headers)
        return self._compressor.compress(block) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, DataFrame):
            return _data_header(frame.stream_id, frame.flags, len(frame.data)) + frame.data
        frame_type, flags, payload = self._control_payload(frame)
        return _control_header(frame_type, flags, len(payload)) + payload

    def _control_payload(self, frame: Frame) -> tuple[int, int, bytes]:
        match frame:
            case SynStreamFrame():
                prefix = struct.pack(">IIBB", frame.stream_id, frame.associated_stream_id, (frame.priority & 7) << 5, frame.slot)
                return TYPE_SYN_STREAM, frame.flags, prefix + self.compress_headers(frame.headers)
            case SynReplyFrame():
                return TYPE_SYN_REPLY, frame.flags, struct.pack(">I", frame.stream_id) + self.compress_headers(frame.headers)
            case HeadersFrame():
                return TYPE_HEADERS, frame.flags, struct.pack(">I", frame.stream_id) + self.compress_headers(frame.headers)
            case RstStreamFrame():
                return TYPE_RST_STREAM, 0, struct.pack(">II", frame.stream_id, frame.status)
            case SettingsFrame():
                entries = b"".join(struct.pack(">II", (s.flags << 24) | s.id, s.value) for s in frame.settings)
                return TYPE_SETTINGS, frame.flags, struct.pack(">I", len(frame.settings)) + entries
            case PingFrame():
                return TYPE_PING, 0, struct.pack(">I", frame.ping_id)
            case GoAwayFrame():
                return TYPE_GOAWAY, 0, struct.pack(">II", frame.last_good_stream_id, frame.status)
            case WindowUpdateFrame():
                return TYPE_WINDOW_UPDATE, 0, struct.pack(">II", frame.stream_id, frame.delta)
        raise TypeError(f"not a SPDY frame: {frame!r}")

    # -- decoding ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Frame]:
        """Take more bytes of the connection; return the frames they complete, in order.

        Unknown control frame types are skipped, as the draft asks.
        """
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= 8:
            first, second = _HEADER.unpack_from(self._buffer)
            flags, length = second >> 24, second & 0xFFFFFF
            is_control = bool(first & 0x80000000)
            limit = self.max_header_block + 4096 if is_control else self.max_frame_length
            if length > min(limit, self.max_frame_length):
                raise SpdyProtocolError(f"frame of {length} bytes is larger than this side accepts")
            if len(self._buffer) < 8 + length:
                break
            payload = bytes(self._buffer[8:8 + length])
            del self._buffer[:8 + length]
            if not is_control:
                frames.append(self._data_frame(first & 0x7FFFFFFF, flags, payload))
                continue
            version, frame_type = (first >> 16) & 0x7FFF, first & 0xFFFF
            if version != VERSION:
                raise SpdyProtocolError(f"SPDY version {version}, not {VERSION}")
            frame = self._control_frame(frame_type, flags, _Reader(payload))
            if frame is not None:
                frames.append(frame)
        return frames

    def pending(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buffer)

    def _data_frame(self, stream_id: int, flags: int, payload: bytes) -> DataFrame:
        if stream_id == 0:
            raise SpdyProtocolError("DATA frame on stream 0")
        return DataFrame(stream_id, payload, flags)

    def _control_frame(self, frame_type: int, flags: int, reader: _Reader) -> Frame | None:
        if frame_type == TYPE_SYN_STREAM:
            stream_id, associated = _stream_id(reader), reader.u32() & 0x7FFFFFFF
            priority, slot = reader.take(2)
            return SynStreamFrame(stream_id, self._headers(reader), flags, associated, priority >> 5, slot)
        if frame_type == TYPE_SYN_REPLY:
            return SynReplyFrame(_stream_id(reader), self._headers(reader), flags)
        if frame_type == TYPE_HEADERS:
            return HeadersFrame(_stream_id(reader), self._headers(reader), flags)
        if frame_type in _FIXED_DECODERS:
            return _FIXED_DECODERS[frame_type](flags, reader)
        return None

    def _headers(self, reader: _Reader) -> Headers:
        compressed = reader.rest()
        try:
            block = self._decompressor.decompress(compressed, self.max_header_block + 1)
        except zlib.error as err:
            raise SpdyProtocolError(f"header block does not inflate: {err}") from err
        if len(block) > self.max_header_block or self._decompressor.unconsumed_tail:
            raise SpdyProtocolError(f"header block inflates past {self.max_header_block} bytes")
        return decode_header_block(block, self.max_header_count)


def _stream_id(reader: _Reader) -> int:
    stream_id = reader.u32() & 0x7FFFFFFF
    if stream_id == 0:
        raise SpdyProtocolError("stream id 0 where a stream is required")
    return stream_id


def _exactly(reader: _Reader, size: int) -> None:
    if reader.remaining() != size:
        raise SpdyProtocolError(f"control frame payload of {reader.remaining()} bytes, expected {size}")


def _rst_stream(flags: int, reader: _Reader) -> Frame:
    _exactly(reader, 8)
    stream_id, status = _stream_id(reader), reader.u32()
    if status == 0:
        raise SpdyProtocolError("RST_STREAM with status 0")
    return RstStreamFrame(stream_id, status)


def _settings(flags: int, reader: _Reader) -> Frame:
    count = reader.u32()
    _exactly(reader, count * 8)
    entries = []
    for _ in range(count):
        flags_id, value = reader.u32(), reader.u32()
        entries.append(Setting(flags_id & 0xFFFFFF, value, flags_id >> 24))
    return SettingsFrame(tuple(entries), flags)


def _ping(flags: int, reader: _Reader) -> Frame:
    _exactly(reader, 4)
    return PingFrame(reader.u32())


def _goaway(flags: int, reader: _Reader) -> Frame:
    _exactly(reader, 8)
    return GoAwayFrame(reader.u32() & 0x7FFFFFFF, reader.u32())


def _window_update(flags: int, reader: _Reader) -> Frame:
    _exactly(reader, 8)
    stream_id, delta = reader.u32() & 0x7FFFFFFF, reader.u32() & 0x7FFFFFFF
    return WindowUpdateFrame(stream_id, delta)


_FIXED_DECODERS = {
    TYPE_RST_STREAM: _rst_stream,
    TYPE_SETTINGS: _settings,
    TYPE_PING: _ping,
    TYPE_GOAWAY: _goaway,
    TYPE_WINDOW_UPDATE: _window_update,
}


def _control_header(frame_type: int, flags: int, length: int) -> bytes:
    return _HEADER.pack(0x80000000 | (VERSION << 16) | frame_type, (flags << 24) | length)


def _data_header(stream_id: int, flags: int, length: int) -> bytes:
    if not 0 < stream_id <= MAX_STREAM_ID or length > MAX_FRAME_LENGTH:
        raise ValueError(f"DATA frame for stream {stream_id} of {length} bytes cannot be encoded")
    return _HEADER.pack(stream_id, (flags << 24) | length)
