"""Small operating-system helpers shared by the mechanisms (which may not import one another)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from qmprt.errors import DeadlineExceeded, InternalError, InvalidArgument, ResourceExhausted

MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the NUL


def listening_unix_socket(path: str | os.PathLike[str], backlog: int = 8) -> socket.socket:
    """Bind and listen on ``path`` (an old file there is replaced), created 0600 under a tight umask."""
    text = os.fspath(path)
    if len(text.encode()) > MAX_SOCKET_PATH:
        raise InvalidArgument(f"socket path {text} is longer than {MAX_SOCKET_PATH} bytes")
    Path(text).unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(text)
        finally:
            os.umask(old_umask)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


async def run_bounded(argv: Sequence[str], timeout: float) -> bytes:
    """Run ``argv`` to completion within ``timeout`` s and return its stdout; a timeout or a
    cancellation kills it. Non-zero exit → InternalError with its stderr; timeout → DeadlineExceeded."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException as err:
        if process.returncode is None:
            process.kill()
            await asyncio.shield(process.wait())
        if isinstance(err, TimeoutError):
            raise DeadlineExceeded(f"{' '.join(argv[:2])} did not finish in {timeout:.0f} s") from err
        raise
    if process.returncode != 0:
        message = f"{' '.join(argv[:2])} failed: {stderr.decode(errors='replace').strip()}"
        if "No space left on device" in message or "Disk quota exceeded" in message:
            raise ResourceExhausted(f"{message}; free space on the node's disk and retry")
        raise InternalError(message)
    return stdout
