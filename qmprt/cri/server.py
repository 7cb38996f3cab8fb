"""The CRI gRPC server: RuntimeService and ImageService on a unix socket.

The socket is claimed first (``qmprt.cri.socket``: one server per path, 0660, stale files removed).

Shutdown (SIGTERM or SIGINT): stop accepting, give in-flight calls ``STOP_GRACE_S``, then close the
runtime, which detaches from the VMs without stopping them: the next ``qmprt serve`` re-adopts them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from cri_api.v1 import api_pb2_grpc

from qmprt import state, telemetry
from qmprt.config import Config
from qmprt.cri.backend import RuntimeBackend, StreamingService, StreamURLs
from qmprt.cri.container import ContainerHandlers
from qmprt.cri.events import EventHandlers
from qmprt.cri.exec import ExecHandlers
from qmprt.cri.image import ImageHandlers
from qmprt.cri.runtime import RuntimeInfoHandlers
from qmprt.cri.sandbox import SandboxHandlers
from qmprt.cri.stats import StatsHandlers
from qmprt.cri.socket import SocketClaim
from qmprt.cri.unixserver import UnixServer, run_until_stopped

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


class RuntimeService(
    RuntimeInfoHandlers, SandboxHandlers, ContainerHandlers, ExecHandlers, StatsHandlers, EventHandlers
):
    """runtime.v1.RuntimeService: the per-area handler classes, combined."""


class ImageService(ImageHandlers):
    """runtime.v1.ImageService."""


class CRIServer(UnixServer):
    """A gRPC server for one runtime on one claimed socket."""

    def __init__(self, runtime: RuntimeBackend, claim: SocketClaim, streams: StreamURLs | None = None) -> None:
        super().__init__(claim)
        self.runtime = runtime
        register_runtime = api_pb2_grpc.add_RuntimeServiceServicer_to_server
        register_images = api_pb2_grpc.add_ImageServiceServicer_to_server
        register_runtime(RuntimeService(runtime, streams), self._server)  # type: ignore[no-untyped-call]
        register_images(ImageService(runtime), self._server)  # type: ignore[no-untyped-call]

    async def start(self) -> None:
        await self.listen()
        log.info("serving CRI v1 on %s", self.address)

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """End the event streams first: they never finish by themselves, so they would hold the
        whole ``grace``."""
        try:
            self.runtime.end_event_streams()
        finally:
            await self.close(grace)


async def open_runtime(config: Config) -> RuntimeBackend:
    from qmprt.pod.runtime import Runtime  # here, so the unit tests run this module without the VM engine

    return await Runtime.open(config)


async def serve(
    config: Config,
    *,
    opener: Callable[[Config], Awaitable[RuntimeBackend]] = open_runtime,
    ready: Callable[[CRIServer], None] | None = None,
    streaming: Callable[[Config, RuntimeBackend], StreamingService] | None = None,
) -> None:
    """Open the runtime, serve until SIGTERM/SIGINT, then shut down in stages (VMs keep running).

    The socket is claimed before the runtime opens, so a second instance pointed at a live socket
    fails before it touches the state directory or re-adopts anything.
    """
    claim = SocketClaim(config.runtime.socket)
    try:
        runtime = await opener(config)
    except BaseException:
        claim.release()
        raise
    streams = streaming(config, runtime) if streaming is not None else None
    try:
        if streams is not None:
            await streams.start()
    except BaseException:
        claim.release()
        await runtime.close()
        raise
    server = CRIServer(runtime, claim, streams)
    endpoint = _metrics_endpoint(config)
    try:
        await run_until_stopped(server, ready, STOP_GRACE_S)
    finally:
        try:
            await server.stop()
            if streams is not None:
                await streams.stop()  # open streams end; their VMs go on
        finally:
            if endpoint is not None:
                endpoint.close()
            await runtime.close()
            log.info("stopped; the VMs keep running and the next qmprt serve re-adopts them")


def _metrics_endpoint(config: Config) -> telemetry.Endpoint | None:
    """The Prometheus endpoint, its address in ``<run_dir>/metrics.address``; a port in use is logged,
    not fatal: the CRI matters more than its metrics."""
    if not config.metrics.address:
        return None
    try:
        endpoint = telemetry.Endpoint(config.metrics.address)
    except OSError as err:
        log.warning("metrics endpoint on %s not started: %s", config.metrics.address, err)
        return None
    run_dir = state.ensure_private_dir(config.runtime.run_dir)
    state.write_json_atomic(run_dir / "metrics.json", {"address": endpoint.address})
    log.info("Prometheus metrics on http://%s/metrics", endpoint.address)
    return endpoint
