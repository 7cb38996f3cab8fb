"""Attaching to a VM's serial console: many readers of its output, one shared writer of its input.

Output: every chunk the console pump copies to the log (``ConsolePump.on_data``) is also handed to
each ``ConsoleTap``, so several attachers see the same bytes while the log keeps being written. A
tap's queue is bounded: an attacher that does not read loses what does not fit (it is told, once, on
its next read) rather than making qmprt buffer without bound or slowing the log.

Input: QEMU's console chardev accepts one client at a time, so the VM keeps one ``ConsoleInput``
connection while any attacher writes, and drops it with the last one. What QEMU sends on that
connection is read and thrown away (the pump already has it from the raw log): a client that does
not read would stall the guest's serial port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from qmprt.errors import Unavailable

log = logging.getLogger(__name__)

TAP_QUEUE_CHUNKS = 256
DROPPED_NOTICE = b"\r\n[qmprt: console output dropped: this attach read too slowly]\r\n"


class ConsoleTap:
    """One attacher's view of the console output from the moment it attached."""

    def __init__(self, taps: ConsoleTaps) -> None:
        self._taps = taps
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(TAP_QUEUE_CHUNKS)
        self._dropped = False

    def _feed(self, data: bytes | None) -> None:
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            self._dropped = True
            if data is None:  # the end must arrive even to a reader that fell behind
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._queue.get_nowait()
                self._queue.put_nowait(None)

    async def read(self) -> bytes | None:
        """The next chunk of output; None once the VM exited or the tap was closed."""
        if self._dropped:
            self._dropped = False
            return DROPPED_NOTICE
        return await self._queue.get()

    def close(self) -> None:
        self._taps.remove(self)
        self._feed(None)


class ConsoleTaps:
    """The fan-out of one VM's console output."""

    def __init__(self) -> None:
        self._taps: list[ConsoleTap] = []
        self._ended = False

    def open(self) -> ConsoleTap:
        tap = ConsoleTap(self)
        if self._ended:
            tap._feed(None)
        else:
            self._taps.append(tap)
        return tap

    def remove(self, tap: ConsoleTap) -> None:
        with contextlib.suppress(ValueError):
            self._taps.remove(tap)

    def feed(self, data: bytes) -> None:
        for tap in list(self._taps):
            tap._feed(data)

    def end(self) -> None:
        """The VM exited: every tap's reader sees the end."""
        self._ended = True
        for tap in list(self._taps):
            tap._feed(None)
        self._taps.clear()

    def __len__(self) -> int:
        return len(self._taps)


class ConsoleInput:
    """The shared writer to one VM's console socket, held while anyone writes."""

    CONNECT_TIMEOUT_S = 5.0

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._users = 0
        self._writer: asyncio.StreamWriter | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            if self._writer is None:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_unix_connection(self.socket_path), self.CONNECT_TIMEOUT_S
                    )
                except (OSError, asyncio.TimeoutError) as err:
                    raise Unavailable(
                        f"cannot reach the console {self.socket_path} (is `qmprt console` attached to it?): {err}"
                    ) from err
                self._writer = writer
                self._drain_task = asyncio.get_running_loop().create_task(_discard(reader), name="console-input")
            self._users += 1

    async def write(self, data: bytes) -> None:
        if self._writer is None:
            raise Unavailable(f"the console {self.socket_path} is not connected")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as err:
            raise Unavailable(f"the console {self.socket_path} went away: {err}") from err

    async def release(self) -> None:
        async with self._lock:
            self._users = max(0, self._users - 1)
            if self._users == 0:
                await self._close()

    async def _close(self) -> None:
        writer, task = self._writer, self._drain_task
        self._writer, self._drain_task = None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _discard(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError):
        while await reader.read(65536):
            pass
