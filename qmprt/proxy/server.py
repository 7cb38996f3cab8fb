"""``qmprt proxy``: one CRI endpoint for kubelet in front of qmprt and containerd (or CRI-O).

It speaks only CRI, to kubelet and to the downstreams, and keeps one piece of state: which
downstream owns each id (``owners.Owners``). It starts whether or not the downstreams answer (a
downstream that is down is reported not ready by Status and its calls get UNAVAILABLE), learns the
ids from their lists in the background, and on SIGTERM stops accepting, lets calls in flight finish
for ``STOP_GRACE_S`` and exits; nothing below it notices.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from cri_api.v1 import api_pb2
from grpc import aio

from qmprt.cri.socket import SocketClaim
from qmprt.cri.unixserver import UnixServer, run_until_stopped
from qmprt.proxy.config import ProxyConfig
from qmprt.proxy.downstream import DownstreamClient, Relayed
from qmprt.proxy.owners import Owners
from qmprt.proxy.routes import Router
from qmprt.proxy.service import Handler, ProxyService

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
SERVICES = ("RuntimeService", "ImageService")


def _unary(behaviour: Handler) -> Callable[[Any, aio.ServicerContext], Any]:
    async def call(request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await behaviour(request, context)
        except Relayed as err:
            await context.abort(err.code, err.details)

    return call


def _stream(behaviour: Callable[[Any, Any], AsyncIterator[Any]]) -> Callable[[Any, aio.ServicerContext], Any]:
    async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(request, context):
                yield response
        except Relayed as err:
            await context.abort(err.code, err.details)

    return call


def generic_handlers(service: ProxyService) -> list[grpc.GenericRpcHandler]:
    """A handler for every method of the CRI v1 services, from the API's own descriptors, so no
    call of the API is left out when the package grows one (it is then routed or UNIMPLEMENTED)."""
    handlers = []
    for service_name in SERVICES:
        descriptor = api_pb2.DESCRIPTOR.services_by_name[service_name]
        methods = {}
        for method in descriptor.methods:
            request_class = getattr(api_pb2, method.input_type.name)
            response_class = getattr(api_pb2, method.output_type.name)
            try:
                behaviour = service.handler(method.name)
            except KeyError:
                log.debug("%s is not routed: UNIMPLEMENTED", method.name)
                continue
            make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
            wrap = _stream if method.server_streaming else _unary
            methods[method.name] = make(
                wrap(behaviour),  # type: ignore[arg-type]
                request_deserializer=request_class.FromString,
                response_serializer=response_class.SerializeToString,
            )
        handlers.append(grpc.method_handlers_generic_handler(f"runtime.v1.{service_name}", methods))
    return handlers


class ProxyServer(UnixServer):
    def __init__(self, config: ProxyConfig, claim: SocketClaim) -> None:
        super().__init__(claim)
        self.config = config
        self.clients = {downstream.name: DownstreamClient(downstream) for downstream in config.downstreams}
        self.owners = Owners(config.state_dir, tuple(self.clients))
        self.router = Router(config, self.clients, self.owners)
        self._server.add_generic_rpc_handlers(generic_handlers(ProxyService(self.router)))
        self._refreshing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.listen()
        self._refreshing = asyncio.ensure_future(self.router.refresh())
        names = ", ".join(f"{c.name} ({c.downstream.endpoint})" for c in self.clients.values())
        log.info("proxying CRI v1 on %s to %s; default %s", self.address, names, self.config.default)

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        try:
            if self._refreshing is not None:
                self._refreshing.cancel()
        finally:
            await self.close(grace)
            for client in self.clients.values():
                await client.close()


async def serve(config: ProxyConfig, ready: Callable[[ProxyServer], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT."""
    claim = SocketClaim(config.socket)
    try:
        server = ProxyServer(config, claim)
    except BaseException:
        claim.release()
        raise
    try:
        await run_until_stopped(server, ready, STOP_GRACE_S)
    finally:
        await server.stop()
