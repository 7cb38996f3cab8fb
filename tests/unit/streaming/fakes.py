"""A fake streaming backend: processes that behave like small shell commands, ports that echo."""

from __future__ import annotations

import asyncio
import contextlib

from qmprt.errors import NotFound, Unavailable
from qmprt.pod.streams import AttachStream, ExecStream


class FakeProcess:
    """``cat`` (echo stdin to EOF, then exit 0), ``exit N``, ``stty size`` (the last resize) or
    ``sleep`` (until killed); ``yes`` writes forever to stdout and stderr."""

    def __init__(self, argv: tuple[str, ...], stdin: bool) -> None:
        self.argv = argv
        self.output: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self.exit_code: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.size = (0, 0)
        self.killed = False
        self.stdin_closed = False
        self._task: asyncio.Task[None] | None = None
        if argv[0] == "exit":
            self._end(int(argv[1]))
        elif argv[0] == "yes":
            self._task = asyncio.ensure_future(self._yes())
        elif argv[0] == "stty":
            pass  # answers once stdin closes
        elif argv[0] == "cat" and not stdin:
            self._end(0)

    def _end(self, code: int) -> None:
        if not self.exit_code.done():
            self.output.put_nowait(None)
            self.exit_code.set_result(code)

    async def _yes(self) -> None:
        while not self.killed:
            await self.output.put(("stdout", b"y\n"))
            await self.output.put(("stderr", b"n\n"))
            await asyncio.sleep(0.01)

    async def write(self, data: bytes) -> None:
        if self.argv[0] == "cat":
            await self.output.put(("stdout", data))
        if self.argv[0] == "sleep" and b"\x03" in data:
            self._end(130)

    async def close_stdin(self) -> None:
        self.stdin_closed = True
        if self.argv[0] == "stty":
            await self.output.put(("stdout", f"{self.size[0]} {self.size[1]}\n".encode()))
        if self.argv[0] in ("cat", "stty"):
            self._end(0)

    async def resize(self, rows: int, cols: int) -> None:
        self.size = (rows, cols)

    async def read(self) -> tuple[str, bytes] | None:
        if self.exit_code.done() and self.output.empty():
            return None
        return await self.output.get()

    async def wait(self) -> int:
        return await self.exit_code

    async def kill(self) -> None:
        self.killed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._end(137)


class EchoConnection:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = False

    async def write(self, data: bytes) -> None:
        await self.queue.put(data.upper())

    async def write_eof(self) -> None:
        await self.queue.put(b"")

    async def read(self) -> bytes:
        return await self.queue.get()

    async def close(self) -> None:
        self.closed = True


class FakeStreamBackend:
    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []
        self.connections: list[EchoConnection] = []

    async def open_exec(self, request: ExecStream) -> FakeProcess:
        if request.argv[0] == "missing":
            raise NotFound("container gone")
        process = FakeProcess(request.argv, request.stdin)
        self.processes.append(process)
        return process

    async def open_attach(self, request: AttachStream) -> FakeProcess:
        process = FakeProcess(("cat",), request.stdin)
        self.processes.append(process)
        return process

    async def open_port(self, sandbox_id: str, port: int) -> EchoConnection:
        if port == 1:
            raise Unavailable("nothing listens on port 1")
        connection = EchoConnection()
        self.connections.append(connection)
        return connection
