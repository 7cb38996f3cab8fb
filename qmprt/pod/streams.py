"""What the streaming server runs for Exec, Attach and PortForward, as pod-layer objects.

Each call gives an object the streaming server pumps without knowing what is behind it:

- Exec: a process in the guest through qmprt's own helper (``qmprt-exec`` on its virtio-serial port:
  a pty, streaming both ways, resize, signals); where the guest lacks the helper, a non-TTY exec goes
  through qemu-guest-agent (``AgentProcess``: stdin read up front, output at exit) and a TTY exec is
  refused with what the guest lacks.
- Attach: the serial console (``ConsoleAttachment``): every attacher sees the same output, the log
  keeps being written, input goes to the console.
- PortForward: a TCP connection to the guest's port at the pod's address, from the node (both
  wiring modes deliver that to the guest), or through the helper when the pod has no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from qmprt.errors import FailedPrecondition, InvalidArgument, Unavailable
from qmprt.pod.live import Container, Sandbox
from qmprt.pod.running import helper_ready, running_vm
from qmprt.pod.states import ContainerState
from qmprt.vm.agent import GuestAgent
from qmprt.vm.attach import ConsoleTap
from qmprt.vm.machine import VM

@dataclass(frozen=True)
class ExecStream:
    """An Exec the CRI accepted, waiting for its client at the streaming server."""

    container_id: str
    argv: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class AttachStream:
    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True)
class PortForwardStream:
    sandbox_id: str
    ports: tuple[int, ...] = ()


StreamRequest = ExecStream | AttachStream | PortForwardStream

log = logging.getLogger(__name__)

EXEC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_STDIN_MAX = 1 << 20  # what a guest-agent exec may be given on stdin (it goes in one QMP message)
CONNECT_TIMEOUT_S = 10.0


class StreamProcess(Protocol):
    """What Exec and Attach stream: bytes in, ("stdout"|"stderr", bytes) out, then an exit code."""

    async def write(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, rows: int, cols: int) -> None: ...

    async def read(self) -> tuple[str, bytes] | None: ...

    async def wait(self) -> int: ...

    async def kill(self) -> None: ...


class ByteStream(Protocol):
    """One port-forwarded TCP connection."""

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self) -> None: ...

    async def read(self) -> bytes: ...

    async def close(self) -> None: ...


def exec_env(tty: bool) -> tuple[tuple[str, str], ...]:
    env = (("PATH", EXEC_PATH), ("HOME", "/root"))
    return (*env, ("TERM", "xterm")) if tty else env


async def open_exec(container: Container, argv: Sequence[str], *, tty: bool, stdin: bool) -> StreamProcess:
    vm = running_vm(container)
    if await helper_ready(vm):
        return await vm.guest_exec.spawn(argv, env=exec_env(tty), tty=tty, stdin=stdin)
    if tty:
        raise FailedPrecondition(
            f"container {container.id[:12]}: its guest runs no qmprt-exec helper, and a terminal (-t) needs "
            "it; exec without -t (through qemu-guest-agent), or use an image with cloud-init, through which "
            "qmprt delivers the helper"
        )
    process = AgentProcess(vm.agent, argv)
    if not stdin:
        await process.close_stdin()
    return process


class AgentProcess:
    """A non-TTY exec through qemu-guest-agent: stdin is collected until it closes (at most
    ``AGENT_STDIN_MAX``), the command runs then, its output arrives when it ends."""

    def __init__(self, agent: GuestAgent, argv: Sequence[str]) -> None:
        self._agent = agent
        self._argv = list(argv)
        self._stdin: list[bytes] = []
        self._stdin_bytes = 0
        self._task: asyncio.Future[tuple[int, list[tuple[str, bytes]]]] | None = None
        self._output: list[tuple[str, bytes]] | None = None
        self._began = asyncio.Event()

    async def write(self, data: bytes) -> None:
        if self._task is not None:
            return
        self._stdin_bytes += len(data)
        if self._stdin_bytes > AGENT_STDIN_MAX:
            raise InvalidArgument(
                f"this guest has no qmprt-exec helper: an exec through its guest agent takes at most "
                f"{AGENT_STDIN_MAX} bytes of stdin"
            )
        self._stdin.append(data)

    async def close_stdin(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="agent-exec")
            self._began.set()

    async def _run(self) -> tuple[int, list[tuple[str, bytes]]]:
        result = await self._agent.exec(self._argv, stdin=b"".join(self._stdin) or None)
        output = [(name, data) for name, data in (("stdout", result.stdout), ("stderr", result.stderr)) if data]
        return result.exit_code, output

    async def resize(self, rows: int, cols: int) -> None:
        return None  # no terminal

    async def read(self) -> tuple[str, bytes] | None:
        if self._output is None:
            await self._began.wait()  # stdin first: the command runs once it closed
            assert self._task is not None
            self._output = list((await asyncio.shield(self._task))[1])
        return self._output.pop(0) if self._output else None

    async def wait(self) -> int:
        await self._began.wait()
        assert self._task is not None
        return (await asyncio.shield(self._task))[0]

    async def kill(self) -> None:
        # The agent cannot signal what guest-exec started; stop waiting for it.
        if self._task is None:  # the client left before stdin ended: the command never runs
            self._task = asyncio.get_running_loop().create_future()
            self._task.set_result((137, []))
            self._began.set()
        elif not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class ConsoleAttachment:
    """One attacher of a VM's serial console."""

    def __init__(self, vm: VM, tap: ConsoleTap, stdin: bool, stdin_once: bool = False) -> None:
        self._vm = vm
        self._tap = tap
        self._holds_input = stdin
        self._once = stdin and stdin_once
        self._closed = False

    @classmethod
    async def open(cls, container: Container, *, stdin: bool) -> ConsoleAttachment:
        vm = running_vm(container)
        if stdin and not container.record.spec.stdin:
            raise FailedPrecondition(
                f"container {container.id[:12]} was created without stdin: attach without -i, or create it with stdin"
            )
        tap = vm.console_taps.open()
        if stdin:
            try:
                await vm.console_input.acquire()
            except BaseException:
                tap.close()
                raise
        return cls(vm, tap, stdin, container.record.spec.stdin_once)

    async def write(self, data: bytes) -> None:
        if self._holds_input:
            await self._vm.console_input.write(data)

    async def close_stdin(self) -> None:
        if self._holds_input:
            self._holds_input = False
            await self._vm.console_input.release()
        if self._once:
            # stdin_once: the attacher's end of stdin is the end of this attach (the VM goes on).
            self._closed = True
            self._tap.close()

    async def resize(self, rows: int, cols: int) -> None:
        return None  # a serial line has no window size to pass on; the guest's stty sets its own

    async def read(self) -> tuple[str, bytes] | None:
        data = await self._tap.read()
        return None if data is None else ("stdout", data)

    async def wait(self) -> int:
        if self._closed:
            return 0
        status = await self._vm.wait_exit()
        return status.exit_code or 0

    async def kill(self) -> None:
        """Detach: the VM goes on."""
        self._closed = True
        self._tap.close()
        await self.close_stdin()


async def open_attach(container: Container, *, stdin: bool) -> StreamProcess:
    return await ConsoleAttachment.open(container, stdin=stdin)


class TCPStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def write_eof(self) -> None:
        if self._writer.can_write_eof():
            self._writer.write_eof()

    async def read(self) -> bytes:
        return await self._reader.read(65536)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def open_port(sandbox: Sandbox, containers: Sequence[Container], port: int) -> ByteStream:
    """A TCP connection to ``port`` of the pod's guest."""
    if not 0 < port < 65536:
        raise InvalidArgument(f"port {port} is not a TCP port (1-65535)")
    address = sandbox.status.ip
    log.info("port-forward to pod %s port %d: %s", sandbox.id[:12], port, address or "through the exec helper")
    if address:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as err:
            raise Unavailable(f"pod {sandbox.spec.metadata.name}: cannot connect to {address} port {port}: {err}") from err
        return TCPStream(reader, writer)
    for container in containers:
        vm = container.vm
        if vm is not None and container.status.state == ContainerState.RUNNING:
            if await helper_ready(vm):
                return await vm.guest_exec.connect_tcp(port)
    raise FailedPrecondition(
        f"pod {sandbox.spec.metadata.name} has no network address and no running container with the "
        "qmprt-exec helper: nothing can reach its port"
    )
