"""The host side of qmprt's in-guest exec helper: processes and TCP connections in the guest.

One ``ExecChannel`` per VM, on the VM's ``exec.sock`` (QEMU's end of the ``io.qmprt.exec.0``
virtio-serial port). It connects once, says HELLO (the helper then kills whatever sessions an earlier
qmprt left), and multiplexes sessions over the one stream (frames: ``qmprt.vm.exec_protocol``). One
reader task per channel routes frames to sessions. Nothing grows without bound: a session's output
queue holds at most the guest's credit window, its stdin waits for credit, and the number of
sessions is capped. When the channel is lost every open session ends: reads return their end,
``wait`` raises Unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Sequence

from qmprt.errors import FailedPrecondition, ResourceExhausted, Unavailable
from qmprt.vm import exec_protocol as proto

log = logging.getLogger(__name__)
MAX_SESSIONS = 1024
HELLO_RETRY = 0.5  # what qmprt writes before the guest opens its port is lost: say HELLO again
UNANSWERED_RETRY = 0.3
START_TIMEOUT = 30.0
SIGKILL_EXIT = 128 + 9


class _Session:
    def __init__(self, channel: ExecChannel, session_id: int, *, tty: bool) -> None:
        self.channel = channel
        self.id = session_id
        self.output: deque[tuple[str, bytes]] = deque()
        self.queued = 0  # bytes in output: the guest may send at most WINDOW before we return credit
        self.changed = asyncio.Event()
        self.open_streams = {"stdout"} if tty else {"stdout", "stderr"}
        self.started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.exit_code: int | None = None
        self.lost = False
        self.closed = False
        self.send_window = proto.WINDOW

    @property
    def over(self) -> bool:
        return self.exit_code is not None or self.lost or self.closed

    def notify(self) -> None:
        self.changed.set()

    def end(self, *, lost: bool = False, exit_code: int | None = None) -> None:
        self.lost = self.lost or lost
        if exit_code is not None and self.exit_code is None:
            self.exit_code = exit_code
        if not self.started.done():
            self.started.set_exception(Unavailable("the exec helper's channel was lost"))
        self.notify()

    async def wait_change(self) -> None:
        self.changed.clear()
        await self.changed.wait()

    async def read(self) -> tuple[str, bytes] | None:
        while True:
            if self.output:
                stream, data = self.output.popleft()
                self.queued -= len(data)
                if not self.over:  # a session that ended is gone in the guest too: no credit to return
                    await self.channel._send_quiet(proto.CREDIT, self.id, proto.u32(len(data)))
                return stream, data
            if not self.open_streams or self.over:
                return None
            await self.wait_change()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            while self.send_window <= 0 and not self.over:
                await self.wait_change()
            if self.over:
                raise Unavailable("the guest session has ended")
            size = min(len(view), self.send_window, proto.MAX_PAYLOAD)
            self.send_window -= size
            await self.channel._send(proto.STDIN, self.id, bytes(view[:size]))
            view = view[size:]

    async def close(self) -> None:
        if self.over:
            self.channel._forget(self)
            return
        self.closed = True
        self.exit_code = SIGKILL_EXIT
        self.channel._forget(self)
        self.notify()
        await self.channel._send_quiet(proto.CLOSE, self.id)


class GuestProcess:
    """A process in the guest. ``read`` gives its output as it comes; ``kill`` ends its process group."""

    def __init__(self, session: _Session, pid: int) -> None:
        self._session = session
        self.pid = pid

    async def write(self, data: bytes) -> None:
        await self._session.write(data)

    async def close_stdin(self) -> None:
        if not self._session.over:
            await self._session.channel._send(proto.STDIN, self._session.id)

    async def resize(self, rows: int, cols: int) -> None:
        if not self._session.over:
            await self._session.channel._send(proto.RESIZE, self._session.id, proto.window_size(rows, cols))

    async def signal(self, signo: int) -> None:
        if not self._session.over:
            await self._session.channel._send(proto.SIGNAL, self._session.id, proto.u32(signo))

    async def read(self) -> tuple[str, bytes] | None:
        return await self._session.read()

    async def wait(self) -> int:
        session = self._session
        while session.exit_code is None and not session.lost:
            await session.wait_change()
        if session.exit_code is None:
            raise Unavailable("the exec helper's channel was lost before the process exited")
        return session.exit_code

    async def kill(self) -> None:
        await self._session.close()


class GuestStream:
    """A TCP connection the guest made to one of its own ports."""

    def __init__(self, session: _Session) -> None:
        self._session = session

    async def write(self, data: bytes) -> None:
        await self._session.write(data)

    async def write_eof(self) -> None:
        if not self._session.over:
            await self._session.channel._send(proto.STDIN, self._session.id)

    async def read(self) -> bytes:
        item = await self._session.read()
        return b"" if item is None else item[1]

    async def close(self) -> None:
        await self._session.close()


class ExecChannel:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._sessions: dict[int, _Session] = {}
        self._ids = itertools.count(1)
        self._hello: asyncio.Future[None] | None = None
        self._nonces: deque[int] = deque(maxlen=16)  # the HELLOs of this connection still worth an answer
        self._ready = False
        self._connect_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._failure = ""

    @property
    def failure(self) -> str:
        """Why the last ``available`` said no ("no-answer", or the connection's error); "" if it did not."""
        return self._failure

    async def available(self, timeout: float = 2.0) -> bool:
        """Whether the helper answers: connects (once; again after a loss) and says HELLO."""
        if self._ready:
            return True
        async with self._connect_lock:
            if self._ready:
                return True
            if self._failure == "no-answer":
                # Asked before and nobody answered: ask again, briefly (the helper may have started
                # since, as cloud-init starts it late), so a guest without it costs little each time.
                timeout = min(timeout, UNANSWERED_RETRY)
            try:
                await asyncio.wait_for(self._connect_and_greet(), timeout)
            except asyncio.TimeoutError:
                self._failure = "no-answer"
                return False
            except (OSError, Unavailable) as err:
                self._failure = f"cannot reach {self.socket_path}: {err}"
                await self._drop()
                return False
            return self._ready

    async def _connect_and_greet(self) -> None:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_unix_connection(self.socket_path)
            self._task = asyncio.get_running_loop().create_task(self._read_loop(self._reader))
        loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        while not self._hello.done():
            nonce = secrets.randbits(32)
            self._nonces.append(nonce)
            await self._send(proto.HELLO, 0, proto.u32(nonce))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._hello), HELLO_RETRY)
        self._hello.result()
        self._ready = True

    async def _require(self) -> None:
        if await self.available():
            return
        if self._failure == "no-answer":
            raise FailedPrecondition(
                "the guest does not run qmprt's exec helper (qmprt-exec on the virtio-serial port "
                "io.qmprt.exec.0): the image lacks it, its cloud-init did not start it, or it has not "
                "started yet"
            )
        raise Unavailable(f"the exec helper's channel is gone: {self._failure}")

    def _new_session(self, *, tty: bool) -> _Session:
        if len(self._sessions) >= MAX_SESSIONS:
            raise ResourceExhausted(f"a guest holds at most {MAX_SESSIONS} exec sessions")
        session = _Session(self, next(self._ids) & 0xFFFFFFFF or next(self._ids), tty=tty)
        self._sessions[session.id] = session
        return session

    async def _start(self, session: _Session, kind: int, payload: bytes) -> int:
        try:
            await self._send(kind, session.id, payload)
            return await asyncio.wait_for(asyncio.shield(session.started), START_TIMEOUT)
        except asyncio.TimeoutError as err:
            await session.close()
            raise Unavailable(f"the exec helper did not start the session within {START_TIMEOUT} s") from err
        except BaseException:
            await session.close()
            raise

    async def spawn(
        self, argv: Sequence[str], *, env: Sequence[tuple[str, str]] = (), workdir: str = "",
        tty: bool = False, stdin: bool = False, rows: int = 0, cols: int = 0,
    ) -> GuestProcess:
        """Start ``argv`` in the guest. A command the guest cannot run (not found: exit 127) still
        gives a process: its stderr says why, as sh would, and ``wait`` returns the code."""
        payload = proto.spawn_payload(argv, env, workdir, tty=tty, stdin=stdin, rows=rows, cols=cols)
        await self._require()
        session = self._new_session(tty=tty)
        pid = await self._start(session, proto.SPAWN, payload)
        return GuestProcess(session, pid)

    async def connect_tcp(self, port: int) -> GuestStream:
        """A connection the guest makes to its own 127.0.0.1:port (or [::1]:port)."""
        if not 0 < port < 65536:
            raise FailedPrecondition(f"port {port} is out of range")
        await self._require()
        session = self._new_session(tty=True)
        await self._start(session, proto.CONNECT, port.to_bytes(2, "big"))
        if session.exit_code is not None:
            message = b"".join(data for _stream, data in session.output).decode(errors="replace")
            raise Unavailable(message.strip() or f"cannot connect to port {port} in the guest")
        return GuestStream(session)

    async def close(self) -> None:
        """End every session (the helper kills them) and close the socket."""
        for session in list(self._sessions.values()):
            await session.close()
        await self._drop()

    # -- the wire ------------------------------------------------------------------------------------
    async def _send(self, kind: int, session_id: int, payload: bytes = b"") -> None:
        data = proto.frame(kind, session_id, payload)
        async with self._write_lock:
            writer = self._writer
            if writer is None:
                raise Unavailable("the exec helper's channel is closed")
            try:
                writer.write(data)
                await writer.drain()
            except OSError as err:
                raise Unavailable(f"the exec helper's channel failed: {err}") from err

    async def _send_quiet(self, kind: int, session_id: int, payload: bytes = b"") -> None:
        with contextlib.suppress(Unavailable):
            await self._send(kind, session_id, payload)

    def _forget(self, session: _Session) -> None:
        self._sessions.pop(session.id, None)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(proto.HEADER.size)
                kind, session_id, length = proto.HEADER.unpack(header)
                if length > proto.MAX_PAYLOAD:
                    log.warning("exec helper on %s sent a %d-byte frame: channel dropped", self.socket_path, length)
                    break
                if not self._dispatch(kind, session_id, await reader.readexactly(length)):
                    log.warning("exec helper on %s sent past its credit: channel dropped", self.socket_path)
                    break
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            if self._reader is reader:
                self._lost()

    def _dispatch(self, kind: int, session_id: int, payload: bytes) -> bool:
        """Route one frame; False when the guest broke the protocol (the guest is not trusted)."""
        if kind == proto.HELLO:
            if proto.parse_u32(payload, 4) in self._nonces and self._hello and not self._hello.done():
                self._hello.set_result(None)
            return True
        session = self._sessions.get(session_id)
        if session is None or not self._ready:
            return True  # stale: a session already closed, or frames meant for an earlier connection
        if kind == proto.STARTED and not session.started.done():
            session.started.set_result(proto.parse_u32(payload))
        elif kind in (proto.STDOUT, proto.STDERR):
            stream = "stdout" if kind == proto.STDOUT else "stderr"
            if payload:
                session.output.append((stream, payload))
                session.queued += len(payload)
                if session.queued > proto.WINDOW:
                    return False
            else:
                session.open_streams.discard(stream)
        elif kind == proto.CREDIT:
            session.send_window += proto.parse_u32(payload)
        elif kind in (proto.EXIT, proto.ERROR):
            self._finish(session, kind, payload)
        session.notify()
        return True

    def _finish(self, session: _Session, kind: int, payload: bytes) -> None:
        self._forget(session)
        code = proto.parse_u32(payload)
        if kind == proto.ERROR:
            message = payload[4:]
            session.output.append(("stderr", message + b"\n"))
            session.open_streams.clear()
            if not session.started.done():
                session.started.set_result(0)
        session.end(exit_code=code)

    def guest_port_changed(self, is_open: bool) -> None:
        """QEMU saw the guest open or close its end of the port (``VSERPORT_CHANGE``): a helper that
        died or restarted. The sessions it held are over; the next call greets whoever opens the
        port next (the host's connection to QEMU stays)."""
        log.info("exec helper port on %s %s by the guest", self.socket_path, "opened" if is_open else "closed")
        self._ready = False
        # Closed: nobody answers until it opens again (short retries). Opened: a helper is there, and
        # the next call waits for its HELLO as long as it is willing to (a clone's, under load, is slow).
        self._failure = "" if is_open else "no-answer"
        for session in list(self._sessions.values()):
            session.end(lost=True)
        self._sessions.clear()

    def _lost(self) -> None:
        self._ready = False
        self._writer_closing()
        for session in list(self._sessions.values()):
            session.end(lost=True)
        self._sessions.clear()

    def _writer_closing(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._reader = None
        self._nonces.clear()

    async def _drop(self) -> None:
        task, self._task = self._task, None
        self._lost()
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
