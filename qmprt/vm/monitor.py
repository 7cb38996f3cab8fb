"""qmprt's own QMP connection to one emulator.

The listening socket exists before QEMU starts (qmprt made it and passed the fd), so ``connect`` never
races QEMU: the connection waits in the backlog until QEMU's main loop accepts it. Events arrive as an
async iterator; the ones qmprt acts on are named in ``WATCHED_EVENTS``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient, QMPError, Runstate

from qmprt.errors import Unavailable, VMError

log = logging.getLogger(__name__)

WATCHED_EVENTS = (
    "SHUTDOWN",
    "POWERDOWN",
    "RESET",
    "STOP",
    "RESUME",
    "GUEST_PANICKED",
    "GUEST_CRASHLOADED",
    "BALLOON_CHANGE",
    "DEVICE_DELETED",
    "VSERPORT_CHANGE",  # the guest opened or closed a virtio-serial port (the exec helper's)
)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, however it ends (an error is logged). A
    cancellation of the caller itself is not swallowed: it propagates from the wait."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r", task.get_name(), task.exception())


@dataclass(frozen=True)
class MonitorEvent:
    name: str
    data: Mapping[str, Any]
    timestamp_ns: int


@dataclass(frozen=True)
class VCPU:
    index: int
    thread_id: int


class Monitor:
    def __init__(self, name: str) -> None:
        self._client = QMPClient(name)
        self._listener = EventListener(WATCHED_EVENTS)
        self._client.register_listener(self._listener)

    async def connect(self, socket_path: str, timeout: float = 30.0) -> None:
        try:
            await asyncio.wait_for(self._client.connect(socket_path), timeout)
        except (ConnectError, OSError, asyncio.TimeoutError) as err:
            raise Unavailable(f"cannot connect to QMP at {socket_path}: {err}") from err

    async def connect_unless(self, socket_path: str, gone: asyncio.Event) -> bool:
        """``connect``, unless ``gone`` (QEMU exited) is set first: then False, and no connection."""
        connect = asyncio.ensure_future(self.connect(socket_path))
        exited = asyncio.ensure_future(gone.wait())
        done, _ = await asyncio.wait({connect, exited}, return_when=asyncio.FIRST_COMPLETED)
        if connect not in done:
            await cancel_and_wait(connect)
            return False
        exited.cancel()
        connect.result()
        return True

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        try:
            return await self._client.execute(command, arguments)
        except ExecuteError as err:
            raise VMError(f"QMP {command} failed: {err}") from err
        except (QMPError, OSError, EOFError) as err:
            raise Unavailable(f"QMP {command}: the monitor is gone ({err!r})") from err

    async def pass_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a copy of ``fd`` (SCM_RIGHTS on the QMP socket), known to it as ``name`` (``getfd``)."""
        try:
            self._client.send_fd_scm(fd)
        except (QMPError, OSError) as err:
            raise Unavailable(f"QMP getfd {name}: cannot pass the fd ({err!r})") from err
        await self.execute("getfd", {"fdname": name})

    @staticmethod
    def _event(message: Mapping[str, Any]) -> MonitorEvent:
        stamp = message.get("timestamp", {})
        timestamp_ns = int(stamp.get("seconds", 0)) * 1_000_000_000 + int(stamp.get("microseconds", 0)) * 1000
        return MonitorEvent(str(message["event"]), dict(message.get("data", {})), timestamp_ns)

    async def events(self) -> AsyncIterator[MonitorEvent]:
        """Events as they come; the iterator does not end by itself when QEMU goes away."""
        async for message in self._listener:
            yield self._event(message)

    def pending_events(self) -> list[MonitorEvent]:
        """Events received but not yet taken from ``events()`` (used once the connection closed)."""
        return [self._event(message) for message in self._listener.clear()]

    async def wait_closed(self, timeout: float) -> bool:
        """Wait until QEMU closed the connection (it sends its last events before); False on timeout."""
        async def closed() -> None:
            while self._client.runstate == Runstate.RUNNING:
                await self._client.runstate_changed()

        try:
            await asyncio.wait_for(closed(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def query_status(self) -> str:
        status = await self.execute("query-status")
        return str(status["status"])

    async def query_vcpus(self) -> list[VCPU]:
        cpus = await self.execute("query-cpus-fast")
        return [VCPU(int(cpu["cpu-index"]), int(cpu["thread-id"])) for cpu in cpus]

    async def close(self) -> None:
        try:
            await self._client.disconnect()
        except (QMPError, OSError, EOFError) as err:
            log.debug("QMP disconnect: %r", err)
        self._client.remove_listener(self._listener)
