"""What every gRPC server of qmprt shares (``qmprt serve``'s and ``qmprt proxy``'s): one claimed unix
socket, the error interceptor, kubelet's message limits, and the shutdown cue (SIGTERM or SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from typing import TypeVar

from grpc import aio

from qmprt.cri.errors import ErrorInterceptor
from qmprt.cri.socket import SocketClaim

log = logging.getLogger(__name__)
Server = TypeVar("Server", bound="UnixServer")

MAX_MESSAGE_BYTES = 16 << 20  # as kubelet's CRI client; ExecSync output can be large


class UnixServer:
    """Subclasses register their services in ``__init__`` and define ``start`` (``listen`` and more)."""

    def __init__(self, claim: SocketClaim) -> None:
        self.claim = claim
        self._server = aio.server(
            interceptors=[ErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )

    @property
    def address(self) -> str:
        return f"unix://{self.claim.path}"

    async def start(self) -> None:
        await self.listen()

    async def listen(self) -> None:
        self._server.add_insecure_port(self.address)
        await self._server.start()
        self.claim.bound()

    async def close(self, grace: float) -> None:
        """Stop accepting, let calls in flight finish within ``grace``, give the socket back."""
        try:
            await self._server.stop(grace)
        finally:
            self.claim.release()


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGTERM or SIGINT while the block runs: a server's cue to shut down in stages."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        yield stopping
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def run_until_stopped(server: Server, ready: Callable[[Server], None] | None, grace: float) -> None:
    """Start ``server``, tell ``ready``, and return at SIGTERM or SIGINT (the caller then stops it)."""
    with stop_signals() as stopping:
        await server.start()
        if ready is not None:
            ready(server)
        await stopping.wait()
        log.info("stopping: no new calls, %.0f s for the calls in flight", grace)
