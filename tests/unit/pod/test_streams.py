"""The pod layer's stream objects with fakes: an exec through the guest agent (no helper)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from qmprt.errors import InvalidArgument
from qmprt.pod import streams
from qmprt.pod.streams import AgentProcess, exec_env
from qmprt.vm.agent import ExecResult


class FakeAgent:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bytes | None]] = []

    async def exec(self, argv: Sequence[str], stdin: bytes | None = None, **_: object) -> ExecResult:
        self.calls.append((list(argv), stdin))
        return ExecResult(4, (stdin or b"").upper(), b"warning\n")


async def test_an_agent_exec_runs_once_stdin_closed_and_gives_output_then_the_code() -> None:
    agent = FakeAgent()
    process = AgentProcess(agent, ["tr", "a-z", "A-Z"])  # type: ignore[arg-type]
    await process.write(b"hello ")
    await process.write(b"agent")
    assert agent.calls == []
    await process.close_stdin()
    assert [await process.read(), await process.read(), await process.read()] == [
        ("stdout", b"HELLO AGENT"), ("stderr", b"warning\n"), None,
    ]
    assert await process.wait() == 4
    assert agent.calls == [(["tr", "a-z", "A-Z"], b"hello agent")]
    await process.write(b"too late")  # ignored once it ran
    await process.resize(24, 80)  # no terminal: nothing to do


async def test_an_agent_exec_bounds_stdin_and_never_runs_for_a_client_that_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "AGENT_STDIN_MAX", 8)
    agent = FakeAgent()
    process = AgentProcess(agent, ["cat"])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="at most 8 bytes"):
        await process.write(b"123456789")
    left = AgentProcess(agent, ["cat"])  # type: ignore[arg-type]
    await left.kill()
    assert await left.wait() == 137 and await left.read() is None and agent.calls == []


def test_an_exec_gets_a_path_and_a_terminal_type_only_with_a_tty() -> None:
    assert dict(exec_env(False))["PATH"].startswith("/usr/local/sbin")
    assert "TERM" not in dict(exec_env(False)) and dict(exec_env(True))["TERM"] == "xterm"
