"""A client for qemu-guest-agent over the VM's virtio-serial channel.

The agent speaks JSON lines without a greeting. A connection may hold stale replies from an earlier
client, and a request cut by a killed qmprt stays half-parsed in the agent: every session starts
with ``guest-sync-delimited`` (a 0xFF byte first, which resets the agent's parser): the agent answers
with a 0xFF byte before the reply, everything before that byte is discarded; a second sync then
proves the parser is back at the top level. QEMU accepts one client at a time on the channel, so each
call to one VM holds a lock, but an exec releases it between its status polls: a long exec never holds
back a probe's short one.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qmprt.errors import DeadlineExceeded, FailedPrecondition, Unavailable

SYNC_DELIMITER = b"\xff"
SYNC_RETRY = 0.5
_sync_ids = itertools.count(int(time.time()) & 0xFFFFFF)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    signal: int | None = None
    truncated: bool = False


class GuestAgent:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._lock = asyncio.Lock()

    async def _session(
        self, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.socket_path, limit=64 << 20), timeout
            )
        except (OSError, asyncio.TimeoutError) as err:
            raise Unavailable(f"cannot reach the guest agent channel {self.socket_path}: {err}") from err
        deadline = time.monotonic() + timeout
        try:
            # Until the guest opens its end of the port, what qmprt writes is lost: ask again
            # every SYNC_RETRY seconds, and take only the answer to the latest question.
            synced = 0
            while synced < 2:
                sync_id = next(_sync_ids)
                writer.write(SYNC_DELIMITER)
                await self._send(writer, "guest-sync-delimited", {"id": sync_id})
                if await self._await_sync(reader, sync_id, min(SYNC_RETRY, _left(deadline))):
                    synced += 1
                    continue
                if _left(deadline) <= 0:
                    raise asyncio.TimeoutError
            return reader, writer
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError, ValueError) as err:
            writer.close()
            raise FailedPrecondition(
                "the guest agent does not answer: the guest has no qemu-guest-agent running on "
                "org.qemu.guest_agent.0, or it has not started yet"
            ) from err

    async def _await_sync(self, reader: asyncio.StreamReader, sync_id: int, wait: float) -> bool:
        until = time.monotonic() + wait
        try:
            while True:
                await asyncio.wait_for(reader.readuntil(SYNC_DELIMITER), _left(until))
                try:
                    reply = await self._read(reader, _left(until))
                except ValueError:  # the rest of a stale reply: wait for the next delimiter
                    continue
                if isinstance(reply, dict) and reply.get("return") == sync_id:
                    return True
        except asyncio.TimeoutError:
            return False

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, command: str, arguments: Mapping[str, Any]) -> None:
        writer.write(json.dumps({"execute": command, "arguments": dict(arguments)}).encode() + b"\n")
        await writer.drain()

    @staticmethod
    async def _read(reader: asyncio.StreamReader, timeout: float) -> dict[str, Any]:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise asyncio.IncompleteReadError(line, None)
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        async with self._lock:
            reader, writer = await self._session(timeout)
            try:
                return await self._call(reader, writer, command, arguments or {}, timeout)
            finally:
                writer.close()

    async def _call(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        command: str,
        arguments: Mapping[str, Any],
        timeout: float,
    ) -> Any:
        try:
            await self._send(writer, command, arguments)
            reply = await self._read(reader, timeout)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError, ValueError) as err:
            raise Unavailable(f"guest agent: no answer to {command}") from err
        if "error" in reply:
            raise FailedPrecondition(f"guest agent: {command}: {reply['error'].get('desc')}")
        return reply.get("return")

    async def ping(self, timeout: float = 5.0) -> None:
        await self.execute("guest-ping", timeout=timeout)

    async def exec(
        self,
        argv: Sequence[str],
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run ``argv`` in the guest and wait for it; ``timeout`` None or 0 means no limit."""
        if not argv:
            raise ValueError("exec needs a command")
        arguments: dict[str, Any] = {
            "path": argv[0],
            "arg": list(argv[1:]),
            "capture-output": True,
        }
        if env:
            arguments["env"] = [f"{key}={value}" for key, value in env.items()]
        if stdin:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        deadline = time.monotonic() + timeout if timeout else None

        def step_timeout() -> float:
            return min(10.0, max(_left(deadline), 0.5)) if deadline is not None else 10.0

        started = await self.execute("guest-exec", arguments, timeout=step_timeout())
        pid = int(started["pid"])
        delay = 0.005
        while True:
            status = await self.execute("guest-exec-status", {"pid": pid}, timeout=step_timeout())
            if status.get("exited"):
                return _exec_result(status)
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"command {argv[0]!r} still running in the guest after {timeout} s")
            await asyncio.sleep(min(delay, _left(deadline)) if deadline is not None else delay)
            delay = min(delay * 2, 0.1)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _exec_result(status: Mapping[str, Any]) -> ExecResult:
    return ExecResult(
        exit_code=int(status.get("exitcode", 128 + int(status.get("signal", 0)))),
        stdout=base64.b64decode(status.get("out-data", "")),
        stderr=base64.b64decode(status.get("err-data", "")),
        signal=int(status["signal"]) if "signal" in status else None,
        truncated=bool(status.get("out-truncated") or status.get("err-truncated")),
    )
