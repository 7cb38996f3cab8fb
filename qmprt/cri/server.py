"""The CRI gRPC server: RuntimeService and ImageService on a unix socket.

Ownership of a socket path: a ``<socket>.lock`` file held with ``flock`` for the server's lifetime
keeps two qmprt instances apart; a probe connection finds any other live server (a containerd, an
old qmprt) before a stale socket file is removed. The socket is 0660 in a directory qmprt creates
0750, so only root and the socket's group reach it.

Shutdown (SIGTERM or SIGINT): stop accepting, give in-flight calls ``STOP_GRACE_S``, then close the
runtime, which detaches from the VMs without stopping them: the next ``qmprt serve`` re-adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt import state, telemetry
from qmprt.config import Config
from qmprt.cri.backend import RuntimeBackend, StreamingService, StreamURLs
from qmprt.cri.container import ContainerHandlers
from qmprt.cri.errors import ErrorInterceptor
from qmprt.cri.events import EventHandlers
from qmprt.cri.exec import ExecHandlers
from qmprt.cri.image import ImageHandlers
from qmprt.cri.runtime import RuntimeInfoHandlers
from qmprt.cri.sandbox import SandboxHandlers
from qmprt.cri.stats import StatsHandlers
from qmprt.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o750
MAX_MESSAGE_BYTES = 16 << 20  # as kubelet's CRI client; ExecSync output can be large
MAX_UNIX_PATH = 107


class RuntimeService(
    RuntimeInfoHandlers, SandboxHandlers, ContainerHandlers, ExecHandlers, StatsHandlers, EventHandlers
):
    """runtime.v1.RuntimeService: the per-area handler classes, combined."""


class ImageService(ImageHandlers):
    """runtime.v1.ImageService."""


def socket_path(address: str) -> str:
    """``unix:///run/x.sock`` or ``/run/x.sock`` → ``/run/x.sock``."""
    path = address.removeprefix("unix://")
    if not os.path.isabs(path):
        raise InvalidArgument(f"the CRI socket {address!r} must be an absolute unix socket path")
    if len(path.encode()) > MAX_UNIX_PATH:
        raise InvalidArgument(f"the CRI socket path {path!r} is longer than {MAX_UNIX_PATH} bytes")
    return path


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class SocketClaim:
    """The right to serve on one socket path; ``release`` gives it back."""

    def __init__(self, path: str) -> None:
        self.path = socket_path(path)
        self._inode: int | None = None
        directory = Path(self.path).parent
        if not directory.exists():
            directory.mkdir(parents=True, mode=SOCKET_DIR_MODE)
            directory.chmod(SOCKET_DIR_MODE)  # mkdir's mode is masked by the umask
        elif directory.stat().st_mode & 0o002:
            log.warning("the CRI socket's directory %s is world-writable", directory)
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._lock_fd)
            raise FailedPrecondition(f"another qmprt serves on {self.path} (it holds {self.path}.lock)") from err
        try:
            self._clear_stale()
        except BaseException:
            self.release()
            raise

    def _clear_stale(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise FailedPrecondition(f"{self.path} exists and is not a socket; qmprt will not replace it")
        if _answers(self.path):
            raise FailedPrecondition(f"another server is listening on {self.path}")
        log.info("removing the stale socket %s", self.path)
        os.unlink(self.path)

    def bound(self) -> None:
        """The server listens now: restrict the socket and remember which file is ours."""
        os.chmod(self.path, SOCKET_MODE)
        self._inode = os.lstat(self.path).st_ino

    def release(self) -> None:
        if self._lock_fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            if self._inode is not None and os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        # The lock file stays: unlinking it would let two later starters lock different inodes.
        os.close(self._lock_fd)
        self._lock_fd = -1


class CRIServer:
    """A gRPC server for one runtime on one claimed socket."""

    def __init__(self, runtime: RuntimeBackend, claim: SocketClaim, streams: StreamURLs | None = None) -> None:
        self.runtime = runtime
        self.claim = claim
        self._server = aio.server(
            interceptors=[ErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        register_runtime = api_pb2_grpc.add_RuntimeServiceServicer_to_server
        register_images = api_pb2_grpc.add_ImageServiceServicer_to_server
        register_runtime(RuntimeService(runtime, streams), self._server)  # type: ignore[no-untyped-call]
        register_images(ImageService(runtime), self._server)  # type: ignore[no-untyped-call]

    @property
    def address(self) -> str:
        return f"unix://{self.claim.path}"

    async def start(self) -> None:
        self._server.add_insecure_port(self.address)
        await self._server.start()
        self.claim.bound()
        log.info("serving CRI v1 on %s", self.address)

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop accepting, end the event streams (they never finish by themselves, so they would hold
        the whole ``grace``), let in-flight calls finish within ``grace``, remove the socket."""
        try:
            self.runtime.end_event_streams()
            await self._server.stop(grace)
        finally:
            self.claim.release()


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
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await server.start()
        if ready is not None:
            ready(server)
        await stopping.wait()
        log.info("stopping: no new calls, %.0f s for the calls in flight", STOP_GRACE_S)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
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
