"""A host loopback port that reaches a port on a test node namespace's loopback.

A ``qmprt serve`` run inside a node namespace answers streaming URLs on that namespace's 127.0.0.1,
which the tests (in the machine's namespace) cannot dial. ``NetnsTunnel`` listens on the host's
loopback and makes each connection, from a thread inside the node namespace, to the same port there;
``url()`` rewrites a streaming URL to go through it. Nothing is added to either namespace's links or
routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from qmprt.net import netns


class NetnsTunnel:
    def __init__(self, netns_path: Path, target_port: int) -> None:
        self.netns_path = netns_path
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        assert parts.port == self.target_port, url
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    def _connect_inside(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.target_port), timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            inner = await asyncio.to_thread(netns.run_in, self.netns_path, self._connect_inside)
            inner.settimeout(None)
            inner_reader, inner_writer = await asyncio.open_connection(sock=inner)
            await asyncio.gather(_copy(reader, inner_writer), _copy(inner_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()
