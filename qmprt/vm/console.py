"""The serial console: QEMU's raw console log → the CRI container log.

QEMU writes every byte of the guest's serial port to ``console.raw`` (the chardev's ``logfile``), whether
or not anybody is attached to the console socket. The pump tails that file and writes CRI log lines::

    2026-11-25T17:46:25.123456789Z stdout F a whole line
    2026-11-25T17:46:25.123456789Z stdout P the first 16 KiB of a longer line…

Its read offset is kept in a small file beside the raw log, so a restarted qmprt goes on where the
previous one stopped: no line is lost while qmprt is down, at the price of late timestamps for the
lines written meanwhile.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from qmprt.errors import FailedPrecondition

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024
POLL_INTERVAL = 0.02


def cri_timestamp(time_ns: int) -> str:
    """RFC 3339 in UTC with exactly nine fractional digits."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


class CRILogWriter:
    """Writes one stream into a CRI log file; splits long lines, keeps partial lines until complete."""

    def __init__(self, path: str | os.PathLike[str], stream: str = "stdout") -> None:
        self.path = Path(path)
        self.stream = stream
        self._pending = b""
        self._lock = threading.Lock()
        self._file = self._open()

    def _open(self) -> BinaryIO:
        """The log file, never through a symlink at its path, and only a regular file (a FIFO placed
        there fails at once instead of blocking)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        fd = os.open(self.path, flags, 0o640)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"{self.path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "ab", buffering=0)

    def _emit(self, text: bytes, tag: bytes, time_ns: int) -> bytes:
        return (
            cri_timestamp(time_ns).encode() + b" " + self.stream.encode() + b" " + tag + b" " + text + b"\n"
        )

    def write(self, data: bytes, time_ns: int | None = None) -> None:
        now = time_ns if time_ns is not None else time.time_ns()
        with self._lock:
            buffer = self._pending + data
            out: list[bytes] = []
            while True:
                newline = buffer.find(b"\n")
                if newline < 0 or newline > MAX_LINE:
                    break
                line = buffer[:newline].strip(b"\r")
                out.append(self._emit(line, b"F", now))
                buffer = buffer[newline + 1 :]
            while len(buffer) >= MAX_LINE and buffer.find(b"\n", 0, MAX_LINE) < 0:
                out.append(self._emit(buffer[:MAX_LINE], b"P", now))
                buffer = buffer[MAX_LINE:]
            self._pending = buffer
            if out:
                self._file.write(b"".join(out))

    def flush_partial(self, time_ns: int | None = None) -> None:
        """Write a held partial line (a prompt without newline) as ``P`` so readers see it."""
        with self._lock:
            if self._pending:
                self._file.write(self._emit(self._pending.rstrip(b"\r"), b"P", time_ns or time.time_ns()))
                self._pending = b""

    def reopen(self) -> None:
        """Start a new file at the same path (after a log rotation moved the old one away)."""
        with self._lock:
            replacement = self._open()  # first: if it fails, the old file is still written
            self._file.close()
            self._file = replacement

    def close(self) -> None:
        with self._lock:
            if self._pending:
                self._file.write(self._emit(self._pending.rstrip(b"\r"), b"F", time.time_ns()))
                self._pending = b""
            self._file.close()



_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
DRAIN_MAX_BYTES = 1 << 20  # copied per poll at most
RAW_KEEP_BYTES = 1 << 20  # what stays on disk of the raw console behind the pump (tails read it)
_PUNCH_ALIGN = 1 << 16


def punch_hole(path: Path, length: int) -> None:
    """Free the disk blocks of the first ``length`` bytes of ``path``; offsets and size stay as they are."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, length) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)


class ConsolePump:
    """Tails ``raw_path`` into a ``CRILogWriter``; ``offset_path`` remembers how far it got.

    ``on_data`` (optional) sees every chunk, for waiting on a marker without rereading the log. The
    raw log stays open between polls, so a poll is one ``fstat`` (QEMU only ever appends to it).
    A chatty guest cannot fill the disk with it: once copied, all but the last ``RAW_KEEP_BYTES`` of
    the raw log are punched out (a sparse file: QEMU's appends and qmprt's offsets are unchanged, the
    blocks are freed). The CRI log itself is kubelet's to rotate (ReopenContainerLog).
    """

    def __init__(
        self,
        raw_path: str | os.PathLike[str],
        offset_path: str | os.PathLike[str],
        writer: CRILogWriter | None,
        on_data: Callable[[bytes], None] | None = None,
    ) -> None:
        self.raw_path = Path(raw_path)
        self.offset_path = Path(offset_path)
        self.writer = writer
        self.on_data = on_data
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._offset = self._load_offset()
        self._raw: BinaryIO | None = None
        self._punched = 0

    def _load_offset(self) -> int:
        try:
            return int(self.offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _save_offset(self) -> None:
        tmp = self.offset_path.with_suffix(".tmp")
        tmp.write_text(str(self._offset))
        os.replace(tmp, self.offset_path)

    def drain(self) -> int:
        """Copy everything new from the raw log; returns the bytes copied."""
        if self._raw is None:
            try:
                self._raw = open(self.raw_path, "rb")  # noqa: SIM115 - kept open across polls
            except FileNotFoundError:
                return 0  # QEMU has not created it yet
        size = os.fstat(self._raw.fileno()).st_size
        if size < self._offset:
            self._offset = self._punched = 0  # the raw log was truncated
        if size == self._offset:
            return 0
        self._raw.seek(self._offset)
        data = self._raw.read(min(size - self._offset, DRAIN_MAX_BYTES))  # a backlog goes in slices
        self._offset += len(data)
        if self.writer is not None:
            self.writer.write(data)
        if self.on_data is not None:
            self.on_data(data)
        self._save_offset()
        self._free_copied()
        return len(data)

    def _free_copied(self) -> None:
        end = (self._offset - RAW_KEEP_BYTES) // _PUNCH_ALIGN * _PUNCH_ALIGN
        if end <= self._punched:
            return
        try:
            punch_hole(self.raw_path, end)
            self._punched = end
        except OSError as err:  # a filesystem without hole punching: the raw log grows as before
            log.warning("console pump %s: cannot free copied bytes: %s", self.raw_path, err)
            self._punched = 1 << 62

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"console:{self.raw_path}")

    async def _run(self) -> None:
        idle = 0.0
        while not self._stopping:
            try:
                copied = self.drain()
            except OSError as err:
                log.warning("console pump %s: %s", self.raw_path, err)
                copied = 0
            if copied:
                idle = 0.0
            else:
                idle += POLL_INTERVAL
                if idle >= 1.0 and self.writer is not None:
                    self.writer.flush_partial()
                    idle = 0.0
            await asyncio.sleep(POLL_INTERVAL)

    async def stop(self) -> None:
        """Copy what is left, then stop; the CRI writer stays open (the caller owns it)."""
        self._stopping = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            self.drain()
        except OSError as err:  # the VM's directory was removed under it
            log.info("console pump %s: last copy skipped: %s", self.raw_path, err)
        self.close()

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


class MarkerWaiters:
    """Waiters for a marker on the console, fed each chunk the pump copies (``ConsolePump.on_data``);
    a marker split across chunks is found in the last ``TAIL_BYTES`` seen."""

    TAIL_BYTES = 4096

    def __init__(self) -> None:
        self._waiters: list[tuple[bytes, asyncio.Future[None]]] = []
        self._tail = b""

    def feed(self, data: bytes) -> None:
        self._tail = (self._tail + data)[-self.TAIL_BYTES:]
        for marker, waiter in list(self._waiters):
            if marker in self._tail and not waiter.done():
                waiter.set_result(None)
        self._waiters = [(m, w) for m, w in self._waiters if not w.done()]

    async def wait(self, marker: bytes, timeout: float) -> None:
        """Wait until ``marker`` is fed (``TimeoutError`` after ``timeout`` s)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((marker, waiter))
        await asyncio.wait_for(waiter, timeout)

    def vm_exited(self) -> None:
        """Fail every waiter: nothing more will be printed."""
        for marker, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(FailedPrecondition(f"the VM exited before printing {marker!r}"))
