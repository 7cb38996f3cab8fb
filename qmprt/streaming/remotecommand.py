"""Kubernetes remotecommand (exec, attach) and port-forward, independent of what carries them.

A transport (``qmprt.streaming.spdy_streams`` for SPDY/3.1, ``qmprt.streaming.websocket`` for
WebSocket) turns its client into a ``ClientIO``: what the client sends as ``Input`` events, and
calls that put bytes on the client's stdout or stderr and its final status. ``run`` pumps a
``StreamProcess`` (``qmprt.pod.streams``) through it: stdin and resizes one way, output the other,
then the exit status as kubelet's JSON ``Status`` (``NonZeroExitCode`` with an ``ExitCode`` cause,
which is how kubectl and crictl learn the code). A client that goes away ends the process (an
exec) or detaches (an attach): ``kill`` runs whatever way ``run`` ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from qmprt.pod.streams import ByteStream, StreamProcess

log = logging.getLogger(__name__)

# The remotecommand subprotocols, newest first (X-Stream-Protocol-Version / Sec-WebSocket-Protocol).
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "channel.k8s.io"
PORT_FORWARD = "portforward.k8s.io"

RESIZE_MAX_BYTES = 4096


@dataclass(frozen=True)
class Input:
    """What a client sent: ``stdin`` bytes, ``eof`` (stdin closed), or ``resize`` to rows × cols."""

    kind: str
    data: bytes = b""
    rows: int = 0
    cols: int = 0


class ClientIO(Protocol):
    def inputs(self) -> AsyncIterator[Input]:
        """What the client sends, until it is gone (the iterator then ends)."""
        ...

    async def output(self, stream: str, data: bytes) -> None: ...

    async def finish(self, exit_code: int, error: str = "") -> None:
        """Send the status and end the streams (a client already gone is not an error)."""
        ...


def status_document(exit_code: int, error: str = "") -> dict[str, Any]:
    """kubelet's ``metav1.Status`` on the error stream (remotecommand v4 and later)."""
    if not exit_code and not error:
        return {"metadata": {}, "status": "Success"}
    if error:
        return {"metadata": {}, "status": "Failure", "message": error, "reason": "InternalError",
                "details": {"causes": [{"message": error}]}, "code": 500}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


def status_bytes(protocol: str, exit_code: int, error: str = "") -> bytes:
    """The error stream's content: JSON Status from v4 on, a plain message before (empty: success)."""
    if protocol in (V4, V5):
        return json.dumps(status_document(exit_code, error), separators=(",", ":")).encode()
    if error:
        return error.encode()
    return f"command terminated with non-zero exit code: exit status {exit_code}".encode() if exit_code else b""


def parse_resize(data: bytes) -> Input | None:
    """``{"Width": cols, "Height": rows}`` (the TerminalSize kubectl sends), or None if it is not one."""
    if len(data) > RESIZE_MAX_BYTES:
        return None
    try:
        size = json.loads(data)
        cols, rows = int(size["Width"]), int(size["Height"])
    except (ValueError, KeyError, TypeError):
        return None
    if not (0 <= cols < 65536 and 0 <= rows < 65536):
        return None
    return Input("resize", rows=rows, cols=cols)


async def run(process: StreamProcess, io: ClientIO) -> None:
    """Stream ``process`` to and from ``io`` until it ends or the client goes away."""
    feeding = asyncio.get_running_loop().create_task(_feed(process, io), name="stream-input")
    try:
        while (item := await process.read()) is not None:
            await io.output(*item)
        exit_code = await process.wait()
    except asyncio.CancelledError:
        raise
    except Exception as err:  # the process's end (a guest that went away) is still told to the client
        log.info("stream ended: %s", err)
        await io.finish(1, str(err))
        return
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeding
        await process.kill()
    await io.finish(exit_code)


async def _feed(process: StreamProcess, io: ClientIO) -> None:
    try:
        async for event in io.inputs():
            if event.kind == "stdin":
                await process.write(event.data)
            elif event.kind == "eof":
                await process.close_stdin()
            elif event.kind == "resize":
                await process.resize(event.rows, event.cols)
    finally:
        # The client is gone (or run is over): whatever the process was doing for it stops.
        await process.kill()


async def splice(connection: ByteStream, receive: Any, send: Any) -> None:
    """Copy between a port-forwarded ``connection`` and the client: ``receive()`` gives the client's
    bytes (b"" at its end), ``send(data)`` gives it the connection's. Ends when both sides ended or
    either failed; the connection is closed."""

    async def upstream() -> None:
        while data := await receive():
            await connection.write(data)
        await connection.write_eof()

    async def downstream() -> None:
        while data := await connection.read():
            await send(data)

    tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[1] in done or any(task.exception() for task in done if not task.cancelled()):
            return  # the port closed (or a side failed): nothing more to carry
        await tasks[1]
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await connection.close()


def choose_protocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first of ``supported`` (ours, by preference) that the client offered."""
    names = {name.strip() for entry in offered for name in entry.split(",")}
    return next((name for name in supported if name in names), None)
