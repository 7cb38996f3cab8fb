"""The frames qmprt and its in-guest exec helper (``images/exec/qmprt-exec.c``) exchange.

One virtio-serial port carries every session. A frame, in both directions::

    type u8 | session u32 BE | length u32 BE | payload (length <= 64 KiB)

The payloads (integers big-endian; the helper's source has the same table):

  host → guest   HELLO 1 nonce u32 (session 0: the guest kills every session, answers HELLO
                 version u32 | nonce u32) · SPAWN 2 flags u8 (1 tty, 2 stdin) | rows u16 | cols u16 |
                 argc u16 | envc u16 | workdir NUL | argv… NUL | "K=V"… NUL · STDIN 3 data (empty:
                 close stdin) · RESIZE 4 rows u16 | cols u16 · SIGNAL 5 signo u32 · CLOSE 6 ·
                 CONNECT 7 port u16 · CREDIT 8 bytes u32
  guest → host   HELLO 1 · CREDIT 8 · STARTED 129 pid u32 · STDOUT 130 / STDERR 131 data (empty:
                 EOF) · EXIT 132 code u32 · ERROR 133 code u32 | message (the session is over)

Each side has at most ``WINDOW`` bytes of a session's data in flight toward the other; the receiver
returns CREDIT as it consumes them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from qmprt.errors import InvalidArgument

HELLO, SPAWN, STDIN, RESIZE, SIGNAL, CLOSE, CONNECT, CREDIT = range(1, 9)
STARTED, STDOUT, STDERR, EXIT, ERROR = range(129, 134)
PROTOCOL_VERSION = 1
HEADER = struct.Struct(">BII")
MAX_PAYLOAD = 64 * 1024
WINDOW = 256 * 1024
FLAG_TTY, FLAG_STDIN = 1, 2
_SPAWN_HEAD = struct.Struct(">BHHHH")
MAX_STRINGS = 0xFFFF


def frame(kind: int, session: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise InvalidArgument(f"a frame carries at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    return HEADER.pack(kind, session, len(payload)) + payload


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def parse_u32(payload: bytes, offset: int = 0) -> int:
    if len(payload) < offset + 4:
        return 0
    value: int = struct.unpack_from(">I", payload, offset)[0]
    return value


def _text(value: str, what: str) -> bytes:
    data = value.encode()
    if b"\0" in data:
        raise InvalidArgument(f"{what} contains a NUL byte")
    return data


def spawn_payload(
    argv: Sequence[str], env: Sequence[tuple[str, str]], workdir: str,
    *, tty: bool, stdin: bool, rows: int, cols: int,
) -> bytes:
    """The SPAWN payload; InvalidArgument for an empty argv, NUL bytes, or more than fits one frame."""
    if not argv or not argv[0]:
        raise InvalidArgument("the command is empty")
    if len(argv) > MAX_STRINGS or len(env) > MAX_STRINGS:
        raise InvalidArgument("too many arguments or environment variables")
    for key, _value in env:
        if not key or "=" in key:
            raise InvalidArgument(f"bad environment variable name {key!r}")
    strings = [_text(workdir, "the working directory")]
    strings += [_text(arg, "an argument") for arg in argv]
    strings += [_text(f"{key}={value}", "an environment variable") for key, value in env]
    flags = (FLAG_TTY if tty else 0) | (FLAG_STDIN if stdin else 0)
    head = _SPAWN_HEAD.pack(flags, _u16(rows), _u16(cols), len(argv), len(env))
    payload = head + b"".join(item + b"\0" for item in strings)
    if len(payload) > MAX_PAYLOAD:
        raise InvalidArgument(f"command, environment and working directory exceed {MAX_PAYLOAD} bytes")
    return payload


def parse_spawn(payload: bytes) -> tuple[int, int, int, list[str], list[str], str]:
    """(flags, rows, cols, argv, env, workdir) of a SPAWN payload (the fake guest in the tests)."""
    flags, rows, cols, argc, envc = _SPAWN_HEAD.unpack_from(payload)
    strings = payload[_SPAWN_HEAD.size:].split(b"\0")
    texts = [item.decode() for item in strings[: 1 + argc + envc]]
    return flags, rows, cols, texts[1 : 1 + argc], texts[1 + argc :], texts[0]


def window_size(rows: int, cols: int) -> bytes:
    return struct.pack(">HH", _u16(rows), _u16(cols))


def _u16(value: int) -> int:
    if not 0 <= value <= 0xFFFF:
        raise InvalidArgument(f"terminal size {value} is out of range")
    return value
