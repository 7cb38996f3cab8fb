"""Reading a container's CRI log file: ``<RFC3339Nano> <stdout|stderr> <P|F> <text>`` per line.

``follow`` keeps reading while the container runs, and reopens the path when the runtime rotated it
(ReopenContainerLog: the old file is renamed away and a new one created under the same name).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

POLL_S = 0.2


@dataclass(frozen=True)
class LogLine:
    timestamp: str
    stream: str  # "stdout" | "stderr"
    partial: bool  # "P": the text continues in the next line
    text: bytes


def parse_line(line: bytes) -> LogLine | None:
    """One CRI log line (with or without its newline); None for a line not in the format."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"P", b"F"):
        return None
    text = parts[3] if len(parts) == 4 else b""
    return LogLine(parts[0].decode(), parts[1].decode(), parts[2] == b"P", text)


def render(line: LogLine) -> bytes:
    """The container's own bytes: a partial line continues without a newline."""
    return line.text if line.partial else line.text + b"\n"


def tail_lines(lines: list[bytes], count: int) -> list[bytes]:
    return lines if count < 0 else lines[len(lines) - count :] if count else []


def read(path: str, tail: int = -1) -> tuple[list[LogLine], int]:
    """The lines of ``path`` now (the last ``tail`` if >= 0), and the offset where reading stopped."""
    with open(path, "rb") as source:
        data = source.read()
    complete = data[: data.rfind(b"\n") + 1]
    lines = tail_lines(complete.splitlines(keepends=True), tail)
    return [parsed for parsed in map(parse_line, lines) if parsed is not None], len(complete)


def follow(path: str, offset: int, running: Callable[[], bool]) -> Iterator[LogLine]:
    """Lines appended to ``path`` after ``offset`` until the container stops and the file is drained."""
    source = _open_at(path, offset)
    pending = b""
    last_check = 0.0
    alive = True
    try:
        while True:
            chunk = source.read(1 << 16)
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    parsed = parse_line(raw)
                    if parsed is not None:
                        yield parsed
                continue
            if _rotated(path, source):
                source.close()
                source = _open_at(path, 0)
                pending = b""
                continue
            if not alive:
                return
            now = time.monotonic()
            if now - last_check >= 1.0:
                last_check = now
                alive = running()  # one more pass over the file after the container stopped
                continue
            time.sleep(POLL_S)
    finally:
        source.close()


def _open_at(path: str, offset: int) -> BinaryIO:
    source = open(path, "rb")  # noqa: SIM115 - closed by follow
    source.seek(offset)
    return source


def _rotated(path: str, source: BinaryIO) -> bool:
    try:
        return os.stat(path).st_ino != os.fstat(source.fileno()).st_ino
    except FileNotFoundError:
        return False  # between the rename and the new file: keep the old one until it appears
