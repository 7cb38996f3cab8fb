"""One downstream CRI endpoint: its channel, its stubs, and what its errors mean to the proxy's caller.

A downstream's own answer (NOT_FOUND, INVALID_ARGUMENT, …) reaches kubelet unchanged: ``Relayed``
carries its code and message. Only "cannot reach it" is the proxy's to say: UNAVAILABLE, naming the
downstream and its socket, so a person knows which runtime to look at.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc
from grpc import aio

from qmprt.cri.unixserver import MAX_MESSAGE_BYTES
from qmprt.errors import Unavailable
from qmprt.proxy.config import Downstream

log = logging.getLogger(__name__)

IMAGE_METHODS = frozenset(method.name for method in api_pb2.DESCRIPTOR.services_by_name["ImageService"].methods)
_CANNOT_REACH = frozenset({grpc.StatusCode.UNAVAILABLE})
READY_WAIT_S = 1.0


class Relayed(Exception):
    """A downstream's error status, to be answered to the caller as it is."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class DownstreamClient:
    """Calls into one downstream, with the caller's deadline."""

    def __init__(self, downstream: Downstream) -> None:
        self.downstream = downstream
        self.name = downstream.name
        self._channel = aio.insecure_channel(
            downstream.endpoint,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # Reconnect fast after a downstream restart: kubelet polls every second.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._runtime = api_pb2_grpc.RuntimeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._images = api_pb2_grpc.ImageServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def _method(self, method: str) -> Any:
        return getattr(self._images if method in IMAGE_METHODS else self._runtime, method)

    def unavailable(self, why: str) -> Unavailable:
        # gRPC's "failed to connect to all addresses; last error: …: connect failed: … error: No such
        # file or directory" comes down to its last part.
        reason = why.rsplit("error: ", 1)[-1].strip() if "connect failed" in why else why
        return Unavailable(f"the {self.name} runtime is not answering on {self.downstream.endpoint} ({reason})")

    async def call(self, method: str, request: Any, timeout: float | None) -> Any:
        """``method`` on this downstream. An unreachable downstream is ``Unavailable`` at once (no
        ``wait_for_ready``: kubelet's whole deadline is not waited out on a dead socket); anything
        it answers itself is ``Relayed``."""
        try:
            return await self._method(method)(request, timeout=timeout, wait_for_ready=False)
        except aio.AioRpcError as err:
            if not await self._back(err):
                raise self._error(err) from err
        try:  # once more, on the channel that just came back
            return await self._method(method)(request, timeout=timeout, wait_for_ready=False)
        except aio.AioRpcError as err:
            raise self._error(err) from err

    async def _back(self, err: aio.AioRpcError) -> bool:
        """A downstream that has just (re)started while the channel waits out its reconnect backoff:
        its socket is there, so connect now instead of failing kubelet's call."""
        if err.code() not in _CANNOT_REACH or not os.path.exists(self.downstream.socket):
            return False
        try:
            await asyncio.wait_for(self._channel.channel_ready(), READY_WAIT_S)
        except asyncio.TimeoutError:
            return False
        return True

    async def stream(self, method: str, request: Any) -> AsyncIterator[Any]:
        call = self._method(method)(request, wait_for_ready=False)
        try:
            async for response in call:
                yield response
        except aio.AioRpcError as err:
            raise self._error(err) from err
        finally:
            call.cancel()

    def _error(self, err: aio.AioRpcError) -> Exception:
        code, details = err.code(), err.details() or ""
        if code in _CANNOT_REACH:
            return self.unavailable(details or "no answer")
        return Relayed(code, details)

    async def close(self) -> None:
        await self._channel.close()
