"""The console's fan-out to attachers and their shared input connection, on a real unix socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qmprt.errors import Unavailable
from qmprt.vm import attach
from qmprt.vm.attach import DROPPED_NOTICE, ConsoleInput, ConsoleTaps


async def test_every_tap_sees_the_output_from_when_it_attached_until_the_end() -> None:
    taps = ConsoleTaps()
    taps.feed(b"before anyone")
    first, second = taps.open(), taps.open()
    taps.feed(b"one")
    second.close()
    taps.feed(b"two")
    taps.end()
    assert [await first.read(), await first.read(), await first.read()] == [b"one", b"two", None]
    assert [await second.read(), await second.read()] == [b"one", None]
    assert await taps.open().read() is None  # attaching after the VM ended
    assert len(taps) == 0


async def test_a_slow_tap_is_told_it_lost_output_and_still_sees_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attach, "TAP_QUEUE_CHUNKS", 2)
    taps = ConsoleTaps()
    tap = taps.open()
    for index in range(5):
        taps.feed(b"%d" % index)
    taps.end()
    seen = [await tap.read() for _ in range(3)]
    assert seen[0] == DROPPED_NOTICE and seen[-1] is None


async def test_the_input_connection_is_shared_and_drained(tmp_path: Path) -> None:
    received = bytearray()
    connections = []

    async def console(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        writer.write(b"x" * (1 << 20))  # what QEMU sends the client: read and dropped
        while data := await reader.read(65536):
            received.extend(data)

    path = tmp_path / "console.sock"
    server = await asyncio.start_unix_server(console, str(path))
    shared = ConsoleInput(str(path))
    with pytest.raises(Unavailable):
        await shared.write(b"not connected")
    await shared.acquire()
    await shared.acquire()
    await shared.write(b"ls\r")
    await shared.release()
    await shared.write(b"pwd\r")  # one holder left: still connected
    await shared.release()
    for _ in range(100):
        if received == b"ls\rpwd\r":
            break
        await asyncio.sleep(0.01)
    assert received == b"ls\rpwd\r" and len(connections) == 1
    server.close()
    await server.wait_closed()
    with pytest.raises(Unavailable, match="cannot reach the console"):
        await ConsoleInput(str(tmp_path / "absent.sock")).acquire()
