"""The exec helper's protocol and ExecChannel, against a fake guest end on a unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qmprt.errors import FailedPrecondition, InvalidArgument, Unavailable
from qmprt.vm import exec_protocol as proto
from qmprt.vm.guest_exec import ExecChannel, GuestProcess


def test_frames_and_spawn_payload_round_trip() -> None:
    assert proto.frame(proto.STDIN, 7, b"ab") == b"\x03\x00\x00\x00\x07\x00\x00\x00\x02ab"
    payload = proto.spawn_payload(["sh", "-c", "x"], [("A", "1")], "/tmp", tty=True, stdin=True, rows=24, cols=80)
    assert payload[:9] == struct.pack(">BHHHH", 3, 24, 80, 3, 1)
    assert proto.parse_spawn(payload) == (3, 24, 80, ["sh", "-c", "x"], ["A=1"], "/tmp")


@pytest.mark.parametrize(
    "argv", [[], [""], ["a\0b"], ["x" * (proto.MAX_PAYLOAD + 1)]], ids=["empty", "empty-name", "nul", "too-big"]
)
def test_bad_argv_is_invalid(argv: list[str]) -> None:
    with pytest.raises(InvalidArgument):
        proto.spawn_payload(argv, [], "", tty=False, stdin=False, rows=0, cols=0)


class FakeGuest:
    """The guest end: answers HELLO, and lets a test script the rest."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[tuple[int, int, bytes]] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None
        self.answer_hello = True
        self.hellos = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, session, length = proto.HEADER.unpack(await reader.readexactly(9))
                payload = await reader.readexactly(length)
                if kind == proto.HELLO:
                    self.hellos += 1
                    if self.answer_hello:
                        self.send(proto.HELLO, 0, proto.u32(1) + payload)
                    continue
                await self.frames.put((kind, session, payload))

    def send(self, kind: int, session: int, payload: bytes = b"") -> None:
        assert self.writer is not None
        self.writer.write(proto.frame(kind, session, payload))

    async def next(self, kind: int) -> tuple[int, bytes]:
        while True:
            got_kind, session, payload = await asyncio.wait_for(self.frames.get(), 5)
            if got_kind == kind:
                return session, payload


async def running(fake: FakeGuest, channel: ExecChannel, argv: list[str], pid: int = 5) -> tuple[int, GuestProcess]:
    """A process the fake guest says it started, and its session id."""
    spawning = asyncio.create_task(channel.spawn(argv, stdin=True))
    session, _ = await fake.next(proto.SPAWN)
    fake.send(proto.STARTED, session, proto.u32(pid))
    return session, await spawning


@pytest.fixture
async def guest(tmp_path: Path) -> AsyncIterator[tuple[FakeGuest, ExecChannel]]:
    fake = FakeGuest()
    path = str(tmp_path / "exec.sock")
    server = await asyncio.start_unix_server(fake.serve, path)
    channel = ExecChannel(path)
    yield fake, channel
    await channel.close()
    server.close()


async def test_spawn_streams_credit_and_exit(guest: tuple[FakeGuest, ExecChannel]) -> None:
    fake, channel = guest
    assert await channel.available()
    spawning = asyncio.create_task(channel.spawn(["cat"], stdin=True))
    session, payload = await fake.next(proto.SPAWN)
    assert proto.parse_spawn(payload)[3] == ["cat"]
    fake.send(proto.STARTED, session, proto.u32(42))
    process = await spawning
    assert process.pid == 42
    await process.write(b"hi")
    assert await fake.next(proto.STDIN) == (session, b"hi")
    fake.send(proto.STDOUT, session, b"out")
    fake.send(proto.STDERR, session, b"err")
    assert await process.read() == ("stdout", b"out")
    assert await fake.next(proto.CREDIT) == (session, proto.u32(3))
    assert await process.read() == ("stderr", b"err")
    fake.send(proto.STDOUT, session)
    fake.send(proto.STDERR, session)
    fake.send(proto.EXIT, session, proto.u32(3))
    assert await process.read() is None
    assert await process.wait() == 3


async def test_stdin_waits_for_credit(guest: tuple[FakeGuest, ExecChannel]) -> None:
    fake, channel = guest
    session, process = await running(fake, channel, ["cat"])
    writing = asyncio.create_task(process.write(b"x" * (proto.WINDOW + 10)))
    received = 0
    while received < proto.WINDOW:
        received += len((await fake.next(proto.STDIN))[1])
    await asyncio.sleep(0.05)
    assert not writing.done() and received == proto.WINDOW  # the window is full: the writer waits
    fake.send(proto.CREDIT, session, proto.u32(proto.WINDOW))
    assert await fake.next(proto.STDIN) == (session, b"x" * 10)
    await writing


async def test_not_found_is_exit_127_with_a_message(guest: tuple[FakeGuest, ExecChannel]) -> None:
    fake, channel = guest
    spawning = asyncio.create_task(channel.spawn(["nope"]))
    session, _ = await fake.next(proto.SPAWN)
    fake.send(proto.ERROR, session, proto.u32(127) + b"sh: nope: not found")
    process = await spawning
    assert await process.read() == ("stderr", b"sh: nope: not found\n")
    assert await process.read() is None
    assert await process.wait() == 127


async def test_a_lost_channel_ends_every_session(guest: tuple[FakeGuest, ExecChannel]) -> None:
    fake, channel = guest
    _, process = await running(fake, channel, ["sleep", "9"])
    assert fake.writer is not None
    fake.writer.close()
    assert await asyncio.wait_for(process.read(), 5) is None
    with pytest.raises(Unavailable):
        await process.wait()
    assert await channel.available()  # reconnects and says HELLO again
    assert fake.hellos == 2


async def test_kill_sends_close_once(guest: tuple[FakeGuest, ExecChannel]) -> None:
    fake, channel = guest
    session, process = await running(fake, channel, ["sleep", "9"])
    await process.kill()
    await process.kill()
    assert await fake.next(proto.CLOSE) == (session, b"")
    assert fake.frames.empty()
    assert await process.read() is None


async def test_a_guest_without_the_helper_is_a_precondition(guest: tuple[FakeGuest, ExecChannel]) -> None:
    fake, channel = guest
    fake.answer_hello = False
    assert not await channel.available(timeout=0.3)
    with pytest.raises(FailedPrecondition, match="exec helper"):
        await channel.spawn(["true"])


async def test_no_socket_is_unavailable(tmp_path: Path) -> None:
    channel = ExecChannel(str(tmp_path / "none.sock"))
    assert not await channel.available()
    with pytest.raises(Unavailable):
        await channel.spawn(["true"])


async def test_a_guest_sending_past_its_credit_loses_the_channel(guest: tuple[FakeGuest, ExecChannel]) -> None:
    fake, channel = guest
    session, process = await running(fake, channel, ["yes"])
    for _ in range(proto.WINDOW // proto.MAX_PAYLOAD + 1):
        fake.send(proto.STDOUT, session, b"y" * proto.MAX_PAYLOAD)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(process.wait(), 5)
