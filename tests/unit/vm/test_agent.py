"""The guest agent client against a fake agent on a unix socket (real-guest twins: test_vm_engine)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from qmprt.errors import DeadlineExceeded, FailedPrecondition
from qmprt.vm.agent import GuestAgent


class FakeAgent:
    """Speaks the agent's protocol; deaf to the first ``deaf_syncs`` sync requests (port not open yet)."""

    def __init__(self, deaf_syncs: int = 0, runs_for_polls: int = 2) -> None:
        self.deaf_syncs = deaf_syncs
        self.runs_for_polls = runs_for_polls
        self.polls = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            request = json.loads(line.lstrip(b"\xff"))
            command, arguments = request["execute"], request.get("arguments", {})
            if command == "guest-sync-delimited":
                if self.deaf_syncs > 0:
                    self.deaf_syncs -= 1
                    continue
                writer.write(b"\xff" + json.dumps({"return": arguments["id"]}).encode() + b"\n")
            elif command == "guest-exec":
                writer.write(json.dumps({"return": {"pid": 7}}).encode() + b"\n")
            elif command == "guest-exec-status":
                self.polls += 1
                if self.polls < self.runs_for_polls:
                    reply = {"exited": False}
                else:
                    reply = {"exited": True, "exitcode": 3, "out-data": base64.b64encode(b"out").decode(),
                             "err-data": base64.b64encode(b"err").decode()}
                writer.write(json.dumps({"return": reply}).encode() + b"\n")
            else:
                writer.write(json.dumps({"error": {"class": "CommandNotFound", "desc": f"no {command}"}}).encode() + b"\n")
            await writer.drain()
        writer.close()


async def serve(tmp_path, agent: FakeAgent) -> tuple[asyncio.AbstractServer, str]:
    path = str(tmp_path / "qga.sock")
    return await asyncio.start_unix_server(agent.handle, path), path


async def test_sync_is_repeated_until_the_guest_listens(tmp_path) -> None:
    server, path = await serve(tmp_path, FakeAgent(deaf_syncs=2))
    async with server:
        result = await GuestAgent(path).exec(["sh", "-c", "x"], timeout=5)
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out", b"err")


async def test_agent_errors_and_deadlines(tmp_path) -> None:
    server, path = await serve(tmp_path, FakeAgent(runs_for_polls=10_000))
    async with server:
        agent = GuestAgent(path)
        with pytest.raises(FailedPrecondition, match="no guest-bogus"):
            await agent.execute("guest-bogus")
        with pytest.raises(DeadlineExceeded):
            await agent.exec(["sleep", "100"], timeout=0.3)


async def test_silent_agent_is_a_clear_failed_precondition(tmp_path) -> None:
    server, path = await serve(tmp_path, FakeAgent(deaf_syncs=1_000))
    async with server:
        with pytest.raises(FailedPrecondition, match="qemu-guest-agent"):
            await GuestAgent(path).execute("guest-ping", timeout=1.2)
