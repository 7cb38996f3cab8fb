"""Running one CNI plugin binary: lookup in the plugin path, stdin/stdout JSON, timeout, errors.

The plugin runs in a session of its own so a timeout kills everything it started (iptables, or the
plugin itself when an ``exec_prefix`` such as ``nsenter --net=…`` exec'd it): nothing survives to
hold the output pipes open. It also dies with qmprt (``setpriv --pdeathsig KILL``, util-linux): an
ADD still running after qmprt was killed would go on changing the node while the restarted qmprt
cleans up after it, and could finish after that clean-up DEL.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qmprt import telemetry
from qmprt.errors import DeadlineExceeded, FailedPrecondition, InternalError


class CNIPluginError(InternalError):
    """A plugin exited non-zero; ``code``/``msg``/``details`` are its CNI error object."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        text = f"CNI plugin {plugin} {command} failed (code {code}): {msg}"
        super().__init__(f"{text}: {details}" if details else text)
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details


_SETPRIV = shutil.which("setpriv")
# Runs before any exec_prefix, so the death signal stays set through nsenter's exec of the plugin.
DIE_WITH_QMPRT: tuple[str, ...] = (_SETPRIV, "--pdeathsig", "KILL", "--") if _SETPRIV else ()


def find_binary(bin_dirs: Sequence[Path], plugin_type: str) -> Path:
    for directory in bin_dirs:
        candidate = directory / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    searched = ", ".join(str(directory) for directory in bin_dirs)
    raise FailedPrecondition(f"CNI plugin {plugin_type} not found in {searched}")


async def run_plugin(
    binary: Path,
    plugin_type: str,
    command: str,
    env: dict[str, str],
    stdin: Any,
    timeout: float,
    exec_prefix: Sequence[str] = (),
) -> bytes:
    """Run the plugin with ``stdin`` as JSON; its stdout on success, CNIPluginError otherwise."""
    with telemetry.CNI_SECONDS.labels(command, plugin_type).time():
        return await _run_plugin(binary, plugin_type, command, env, stdin, timeout, exec_prefix)


async def _run_plugin(
    binary: Path, plugin_type: str, command: str, env: dict[str, str], stdin: Any, timeout: float,
    exec_prefix: Sequence[str],
) -> bytes:
    try:
        process = await asyncio.create_subprocess_exec(
            *DIE_WITH_QMPRT,
            *exec_prefix,
            str(binary),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as err:
        raise InternalError(f"CNI plugin {plugin_type} {command}: cannot start {binary}: {err}") from err
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(json.dumps(stdin).encode()), timeout)
    except asyncio.TimeoutError as err:
        await _kill_group(process)
        raise DeadlineExceeded(f"CNI plugin {plugin_type} {command} did not finish in {timeout:g}s") from err
    except BaseException:
        await _kill_group(process)
        raise
    if process.returncode != 0:
        raise _plugin_error(plugin_type, command, process.returncode or 0, stdout, stderr)
    return stdout


def decode_object(plugin_type: str, command: str, stdout: bytes) -> dict[str, Any]:
    try:
        document = json.loads(stdout)
    except ValueError as err:
        raise InternalError(f"CNI plugin {plugin_type} {command} printed invalid JSON: {err}") from err
    if not isinstance(document, dict):
        raise InternalError(f"CNI plugin {plugin_type} {command} printed {type(document).__name__}, not an object")
    return document


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    await process.wait()


def _plugin_error(plugin_type: str, command: str, exit_code: int, stdout: bytes, stderr: bytes) -> CNIPluginError:
    try:
        document = json.loads(stdout)
    except ValueError:
        document = None
    if isinstance(document, dict) and "msg" in document:
        code = document.get("code")
        return CNIPluginError(
            plugin_type,
            command,
            code if isinstance(code, int) else exit_code,
            str(document.get("msg", "")),
            str(document.get("details", "")),
        )
    text = (stderr or stdout).decode(errors="replace").strip() or f"exit status {exit_code}"
    return CNIPluginError(plugin_type, command, exit_code, text[-2000:])
