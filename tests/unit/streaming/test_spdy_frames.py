"""SPDY/3.1 framing: byte layouts from the draft, the header dictionary, zlib state, bad input."""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import zlib

import pytest

from qmprt.streaming.spdy_dictionary import DICTIONARY
from qmprt.streaming.spdy_frames import (
    CANCEL, FLAG_FIN, GOAWAY_PROTOCOL_ERROR, SETTINGS_INITIAL_WINDOW_SIZE, DataFrame, Frame,
    FrameCodec, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, Setting, SettingsFrame,
    SpdyProtocolError, SynReplyFrame, SynStreamFrame, WindowUpdateFrame, encode_header_block,
)

K8S_HEADERS = (("streamtype", "stdout"), ("port", "8080"), ("requestid", "0"))


def raw_header_block(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """The name/value block laid out by hand from the draft (section 2.6.10)."""
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


def control(frame_type: int, flags: int, payload: bytes, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, frame_type, (flags << 24) | len(payload)) + payload


def test_dictionary_is_spdy3s_exactly() -> None:
    # length and digest of the 1423 bytes in moby/spdystream's spdy/dictionary.go (the draft's table)
    assert len(DICTIONARY) == 1423
    assert hashlib.sha256(DICTIONARY).hexdigest() == "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


ROUND_TRIP = [
    DataFrame(1, b"hello", FLAG_FIN),
    DataFrame(2**31 - 1, b""),
    SynStreamFrame(1, K8S_HEADERS, FLAG_FIN, associated_stream_id=0, priority=7, slot=0),
    SynStreamFrame(3, (("a", "x\x00y"),)),
    SynReplyFrame(1, ()),
    SynReplyFrame(1, K8S_HEADERS, FLAG_FIN),
    HeadersFrame(5, (("x-extra", "1"),), FLAG_FIN),
    RstStreamFrame(1, CANCEL),
    SettingsFrame((Setting(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20, 1), Setting(4, 100))),
    SettingsFrame(),
    PingFrame(1),
    PingFrame(0xFFFFFFFF),
    GoAwayFrame(7, GOAWAY_PROTOCOL_ERROR),
    WindowUpdateFrame(0, 65536),
    WindowUpdateFrame(3, 2**31 - 1),
]


@pytest.mark.parametrize("frame", ROUND_TRIP, ids=lambda f: type(f).__name__)
def test_every_frame_type_round_trips(frame: Frame) -> None:
    sender, receiver = FrameCodec(), FrameCodec()
    assert receiver.feed(sender.encode(frame)) == [frame]


LAYOUTS = [
    (PingFrame(1), "80030006 00000004 00000001"),
    (RstStreamFrame(1, CANCEL), "80030003 00000008 00000001 00000005"),
    (GoAwayFrame(5, 0), "80030007 00000008 00000005 00000000"),
    (WindowUpdateFrame(1, 0x10000), "80030009 00000008 00000001 00010000"),
    (SettingsFrame((Setting(7, 0x10000, 1),)), "80030004 0000000c 00000001 01000007 00010000"),
    (DataFrame(1, b"hello", FLAG_FIN), "00000001 01000005 68656c6c6f"),
    (DataFrame(3, b""), "00000003 00000000"),
]


@pytest.mark.parametrize(("frame", "layout"), LAYOUTS, ids=[f"{type(f).__name__}-{i}" for i, (f, _) in enumerate(LAYOUTS)])
def test_fixed_frames_match_the_drafts_layout(frame: Frame, layout: str) -> None:
    wire = bytes.fromhex(layout.replace(" ", ""))
    assert FrameCodec().encode(frame) == wire
    assert FrameCodec().feed(wire) == [frame]


def test_syn_stream_from_a_reference_compressor_decodes_across_frames() -> None:
    # what Go's compress/zlib writer does: level 9 with the dictionary, Flush (= SYNC_FLUSH) per block
    reference = zlib.compressobj(9, zlib.DEFLATED, 15, zdict=DICTIONARY)
    codec, wire = FrameCodec(), b""
    for stream_id, kind in ((1, b"error"), (3, b"stdout"), (5, b"stdin")):
        block = raw_header_block([(b"streamtype", kind)])
        compressed = reference.compress(block) + reference.flush(zlib.Z_SYNC_FLUSH)
        prefix = struct.pack(">IIBB", stream_id, 0, 0, 0)
        wire += control(1, FLAG_FIN if kind != b"stdin" else 0, prefix + compressed)
    frames = codec.feed(wire)
    assert [(f.stream_id, f.headers) for f in frames if isinstance(f, SynStreamFrame)] == [
        (1, (("streamtype", "error"),)), (3, (("streamtype", "stdout"),)), (5, (("streamtype", "stdin"),)),
    ]
    assert [f.flags for f in frames if isinstance(f, SynStreamFrame)] == [FLAG_FIN, FLAG_FIN, 0]


def test_our_header_blocks_inflate_with_a_standard_decompressor() -> None:
    codec = FrameCodec()
    reader = zlib.decompressobj(zdict=DICTIONARY)
    for stream_id in (2, 4, 6):  # one deflate stream across frames: each block needs the ones before
        wire = codec.encode(SynReplyFrame(stream_id, K8S_HEADERS))
        (length,) = struct.unpack(">I", wire[4:8])
        assert len(wire) == 8 + length
        assert wire[8:12] == struct.pack(">I", stream_id)
        assert reader.decompress(wire[12:]) == raw_header_block([(n.encode(), v.encode()) for n, v in K8S_HEADERS])


def test_later_header_blocks_need_the_earlier_ones() -> None:
    sender = FrameCodec()
    first, second = sender.encode(SynReplyFrame(1, K8S_HEADERS)), sender.encode(SynReplyFrame(3, K8S_HEADERS))
    assert len(second) < len(first)  # the second refers back into the first
    with pytest.raises(SpdyProtocolError):
        FrameCodec().feed(second)


def test_partial_frames_wait_for_the_rest() -> None:
    wire = FrameCodec().encode(SynStreamFrame(1, K8S_HEADERS)) + FrameCodec().encode(PingFrame(1))
    codec, frames = FrameCodec(), []
    for index in range(len(wire)):
        frames += codec.feed(wire[index:index + 1])
    assert frames == [SynStreamFrame(1, K8S_HEADERS), PingFrame(1)]
    assert codec.pending() == 0


def test_unknown_control_frames_are_skipped() -> None:
    wire = control(0x0A, 0, b"whatever") + control(5, 0, b"") + FrameCodec().encode(PingFrame(3))
    assert FrameCodec().feed(wire) == [PingFrame(3)]


def test_names_are_lower_cased_when_written() -> None:
    assert encode_header_block((("StreamType", "stdin"),)) == raw_header_block([(b"streamtype", b"stdin")])


# spdystream's TestReadMalformedZlibHeader frames: SPDY/2 headers with a corrupted zlib header
SPDYSTREAM_MALFORMED = [
    "gAIAAQAAABgAAAACAAAAAAAAF/nfolGyYmAAAAAA//8=",
    "gAIAAgAAABQAAAACAAAX+d+iUbJiYAAAAAD//w==",
    "gAIACAAAABQAAAACAAAX+d+iUbJiYAAAAAD//w==",
]


@pytest.mark.parametrize("encoded", SPDYSTREAM_MALFORMED, ids=["syn-stream", "syn-reply", "headers"])
def test_spdystreams_malformed_frames_are_refused(encoded: str) -> None:
    wire = base64.b64decode(encoded)
    with pytest.raises(SpdyProtocolError, match="version 2"):
        FrameCodec().feed(wire)
    as_v3 = wire[:1] + b"\x03" + wire[2:]  # the same frame claiming SPDY/3: its zlib header is still bad
    with pytest.raises(SpdyProtocolError):
        FrameCodec().feed(as_v3)


def header_frame(block: bytes, compress: bool = True) -> bytes:
    if compress:
        writer = zlib.compressobj(zdict=DICTIONARY)
        block = writer.compress(block) + writer.flush(zlib.Z_SYNC_FLUSH)
    return control(2, 0, struct.pack(">I", 1) + block)


BAD_INPUT = {
    "bad-version": control(6, 0, struct.pack(">I", 1), version=2),
    "short-rst-stream": control(3, 0, struct.pack(">I", 1)),
    "long-ping": control(6, 0, b"\x00" * 8),
    "rst-status-zero": control(3, 0, struct.pack(">II", 1, 0)),
    "rst-stream-zero": control(3, 0, struct.pack(">II", 0, 5)),
    "settings-count-lies": control(4, 0, struct.pack(">I", 3) + b"\x00" * 8),
    "data-stream-zero": struct.pack(">II", 0, 0),
    "syn-stream-too-short": control(1, 0, b"\x00\x00\x00\x01"),
    "garbage-zlib": control(2, 0, struct.pack(">I", 1) + b"not zlib at all"),
    "truncated-block": header_frame(raw_header_block([(b"a", b"b")])[:-1]),
    "count-lies": header_frame(struct.pack(">I", 2) + raw_header_block([(b"a", b"b")])[4:]),
    "trailing-bytes": header_frame(raw_header_block([(b"a", b"b")]) + b"x"),
    "upper-case-name": header_frame(raw_header_block([(b"Host", b"b")])),
    "empty-name": header_frame(raw_header_block([(b"", b"b")])),
    "not-utf8": header_frame(raw_header_block([(b"a", b"\xff\xfe")])),
    "too-many-headers": header_frame(raw_header_block([(b"h%d" % i, b"") for i in range(2000)])),
    "inflates-past-256k": header_frame(raw_header_block([(b"a", b"\x00" * 300_000)])),
    "control-too-long": struct.pack(">HHI", 0x8003, 6, 300_000),
}


@pytest.mark.parametrize("wire", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(SpdyProtocolError):
        FrameCodec().feed(wire)


def test_oversize_data_frames_are_refused_from_their_header() -> None:
    codec = FrameCodec(max_frame_length=1 << 20)
    with pytest.raises(SpdyProtocolError, match="larger"):
        codec.feed(struct.pack(">II", 1, (1 << 20) + 1))  # refused before its payload arrives
    assert FrameCodec().feed(struct.pack(">II", 1, 2**24 - 1)) == []  # the 16 MiB maximum waits for its bytes


def test_random_bytes_never_raise_anything_but_the_protocol_error() -> None:
    rng = random.Random(14)
    valid = FrameCodec().encode(SynStreamFrame(1, K8S_HEADERS))
    for _ in range(2000):
        wire = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            wire[rng.randrange(len(wire))] = rng.randrange(256)
        try:
            FrameCodec(max_frame_length=4096).feed(bytes(wire[: rng.randint(1, len(wire))]))
        except SpdyProtocolError:
            pass
