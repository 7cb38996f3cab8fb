"""The streaming server: the URLs that Exec, Attach and PortForward answer, served over HTTP(S).

``qmprt serve`` starts it beside the CRI socket (``[streaming]``: ``address``, default loopback and a
free port, so kubelet on the same node reaches it; optional TLS ``cert_file``/``key_file``) and stops
it with itself: open streams end then, the VMs keep running. Paths are ``/exec/<token>``,
``/attach/<token>`` and ``/portforward/<token>``; the token is single-use and expires
(``qmprt.streaming.tokens``); a bad one is 404 and nothing runs. Each endpoint speaks both upgrades
kubelet, kubectl and crictl use: SPDY/3.1 (``qmprt.streaming.spdy_streams``) and WebSocket
(``qmprt.streaming.websocket``).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from typing import Protocol

from aiohttp import web

from qmprt.config import StreamingConfig
from qmprt.errors import QmprtError
from qmprt.pod.streams import AttachStream, ByteStream, ExecStream, PortForwardStream, StreamProcess, StreamRequest
from qmprt.streaming import remotecommand, spdy_streams, websocket
from qmprt.streaming.tokens import PendingRequests

log = logging.getLogger(__name__)

MAX_STREAMS = 1024
KINDS: dict[str, type] = {"exec": ExecStream, "attach": AttachStream, "portforward": PortForwardStream}


class StreamBackend(Protocol):
    """What the streaming server runs (the pod layer's ``Runtime``)."""

    async def open_exec(self, request: ExecStream) -> StreamProcess: ...

    async def open_attach(self, request: AttachStream) -> StreamProcess: ...

    async def open_port(self, sandbox_id: str, port: int) -> ByteStream: ...


class StreamingServer:
    def __init__(self, config: StreamingConfig, backend: StreamBackend) -> None:
        self.config = config
        self.backend = backend
        self.pending = PendingRequests(config.token_ttl_seconds)
        self._runner: web.AppRunner | None = None
        self._base_url = ""
        self._active = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_route("*", "/{kind}/{token}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        host, _, port = self.config.address.rpartition(":")
        host = host.strip("[]")
        site = web.TCPSite(self._runner, host, int(port), ssl_context=self._ssl_context(), backlog=256)
        try:
            await site.start()
        except OSError as err:
            await self._runner.cleanup()
            raise QmprtError(f"streaming server: cannot listen on {self.config.address}: {err}") from err
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        self._base_url = f"{'https' if self.config.cert_file else 'http'}://{_url_host(host)}:{bound[1]}"
        log.info("streaming server on %s", self._base_url)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def base_url(self) -> str:
        return self._base_url

    def url(self, request: StreamRequest) -> str:
        kind = next(name for name, cls in KINDS.items() if isinstance(request, cls))
        return f"{self._base_url}/{kind}/{self.pending.put(request)}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.cert_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.cert_file, self.config.key_file or None)
        return context

    # -- requests --------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        cls = KINDS.get(kind)
        pending = self.pending.take(request.match_info["token"]) if cls is not None else None
        if pending is None or not isinstance(pending, cls):  # type: ignore[arg-type]
            return web.Response(status=404, text="unknown or expired streaming token\n")
        upgrade = request.headers.get("Upgrade", "").lower()
        if upgrade not in ("websocket", "spdy/3.1"):
            return web.Response(status=400, text="upgrade the connection to SPDY/3.1 or WebSocket\n")
        if self._active >= MAX_STREAMS:
            return web.Response(status=503, text=f"{MAX_STREAMS} streams are open; try again later\n")
        self._active += 1
        log.debug("stream %s (%s) for %s: started", kind, upgrade, _target(pending))
        try:
            if isinstance(pending, PortForwardStream):
                return await self._port_forward(request, upgrade, pending)
            return await self._remotecommand(request, upgrade, pending)
        finally:
            self._active -= 1
            log.debug("stream %s for %s: ended", kind, _target(pending))

    async def _remotecommand(
        self, request: web.Request, upgrade: str, pending: ExecStream | AttachStream
    ) -> web.StreamResponse:
        if upgrade == "websocket":
            ws = await websocket.prepare(request, websocket.REMOTECOMMAND_PROTOCOLS)
            io: remotecommand.ClientIO = websocket.WebSocketIO(ws)
            await self._run(pending, io)
            return ws
        session = await spdy_streams.upgrade(request, spdy_streams.REMOTECOMMAND_PROTOCOLS)
        if isinstance(session, web.StreamResponse):
            return session
        try:
            spdy_io = await spdy_streams.RemoteCommandIO.accept(session, pending)
            if spdy_io is not None:
                await self._run(pending, spdy_io)
        finally:
            await session.close()
        return session.response

    async def _run(self, pending: ExecStream | AttachStream, io: remotecommand.ClientIO) -> None:
        try:
            if isinstance(pending, ExecStream):
                process = await self.backend.open_exec(pending)
            else:
                process = await self.backend.open_attach(pending)
        except QmprtError as err:
            await io.finish(1, str(err))
            return
        await remotecommand.run(process, io)

    async def _port_forward(self, request: web.Request, upgrade: str, pending: PortForwardStream) -> web.StreamResponse:
        async def connect(port: int) -> ByteStream:
            return await self.backend.open_port(pending.sandbox_id, port)

        tunneled = (spdy_streams.TUNNELED_PORT_FORWARD,)
        offered = request.headers.getall("Sec-WebSocket-Protocol", [])
        if upgrade == "websocket" and remotecommand.choose_protocol(offered, tunneled):
            ws = await websocket.prepare(request, tunneled)
            tunnel = spdy_streams.WebSocketTunnel(ws)
            try:
                await spdy_streams.port_forward(tunnel.upgraded(), pending.ports, connect)
            finally:
                await tunnel.close()
            return ws
        if upgrade == "websocket":
            ports = _query_ports(request) or pending.ports
            if not ports:
                return web.Response(status=400, text="name the ports: ?port=8080&port=…\n")
            ws = await websocket.prepare(request, websocket.PORT_FORWARD_PROTOCOLS)
            await websocket.port_forward(ws, ports, connect)
            return ws
        session = await spdy_streams.upgrade(request, (remotecommand.PORT_FORWARD,))
        if isinstance(session, web.StreamResponse):
            return session
        try:
            await spdy_streams.port_forward(session, pending.ports, connect)
        finally:
            await session.close()
        return session.response


def _target(pending: StreamRequest) -> str:
    return (pending.sandbox_id if isinstance(pending, PortForwardStream) else pending.container_id)[:12]


def _query_ports(request: web.Request) -> tuple[int, ...]:
    ports: list[int] = []
    # kubelet's clients name them "port" (repeated), the kubernetes Python client "ports" (a list).
    for value in [*request.query.getall("port", []), *request.query.getall("ports", [])]:
        for part in value.split(","):
            if not part.strip().isdigit() or not 0 < int(part) < 65536:
                raise web.HTTPBadRequest(text=f"port {part[:20]!r} is not a TCP port\n")
            ports.append(int(part))
    return tuple(ports[:64])


def _url_host(host: str) -> str:
    """The host a client on this node should dial: loopback for a wildcard bind, IPv6 in brackets."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host

