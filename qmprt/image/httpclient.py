"""The HTTP side of a fetch: urllib handlers whose sockets an ``Abort`` can shut down, TLS settings,
a redirect policy, and the mapping of HTTP statuses to qmprt errors.

Redirects stay within http(s) (no ftp, file or data handler is installed at all), never go from https
down to http, and carry the credentials only to the same origin (scheme, host and port).
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

from qmprt.errors import InvalidArgument, NotFound, QmprtError, Unavailable
from qmprt.image.fetch_settings import FetchSettings


class Aborted(Exception):
    """The transfer stopped because its caller went away (never escapes ``fetch``)."""


class Abort:
    """A flag set from the event loop, and the sockets to shut down when it is."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Aborted()

    def register(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            aborted = self._event.is_set()
        if aborted:
            self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        # The plain socket's shutdown, also for an SSLSocket: SSLSocket.shutdown would drop the SSL
        # object under the thread that is reading through it.
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def set(self) -> None:
        with self._lock:
            self._event.set()
            sockets = list(self._sockets)
        for sock in sockets:
            self._shutdown(sock)


class _AbortableConnection(http.client.HTTPConnection):
    """A connection whose socket an ``Abort`` can shut down from another thread."""

    def __init__(self, *args: Any, abort: Abort, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._abort = abort

    def connect(self) -> None:
        self._abort.check()
        super().connect()
        self._abort.register(self.sock)


class _HTTPConnection(_AbortableConnection):
    pass


class _HTTPSConnection(_AbortableConnection, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, abort: Abort) -> None:
        super().__init__()
        self._abort = abort

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, abort=self._abort), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, abort: Abort, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._abort = abort
        self._ssl_context = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_HTTPSConnection, abort=self._abort, context=self._ssl_context)
        return self.do_open(connection, req)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Redirects within http(s) only, never https → http, credentials kept only on the same origin."""

    def __init__(self, max_redirects: int, authorization: str | None) -> None:
        super().__init__()
        # A class attribute in urllib; this instance's limit shadows it.
        setattr(self, "max_redirections", max_redirects)
        self._authorization = authorization

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if new.scheme not in ("http", "https"):
            raise InvalidArgument(f"{req.full_url} redirects to {newurl}, which is not an http(s) URL")
        if old.scheme == "https" and new.scheme == "http":
            raise InvalidArgument(f"{req.full_url} redirects from https down to plain http ({newurl})")
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None and self._authorization and (old.scheme, old.netloc) == (new.scheme, new.netloc):
            redirected.add_unredirected_header("Authorization", self._authorization)
        return redirected


def ssl_context(transport: FetchSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=transport.ca_file)
        if transport.client_cert:
            context.load_cert_chain(transport.client_cert, transport.client_key)
    except (OSError, ssl.SSLError) as err:
        raise InvalidArgument(f"transport TLS settings: {err}") from err
    if transport.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def opener(transport: FetchSettings, abort: Abort, authorization: str | None) -> urllib.request.OpenerDirector:
    # Built by hand rather than with build_opener: no ftp, file or data handlers behind a redirect.
    opener = urllib.request.OpenerDirector()
    if transport.proxy is None:
        proxies = urllib.request.getproxies()
    elif transport.proxy == "":
        proxies = {}
    else:
        proxies = {"http": transport.proxy, "https": transport.proxy}
    for handler in (
        urllib.request.ProxyHandler(proxies),
        _HTTPHandler(abort),
        _HTTPSHandler(abort, ssl_context(transport)),
        _RedirectHandler(transport.max_redirects, authorization),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def http_error(url: str, err: urllib.error.HTTPError) -> QmprtError:
    code = err.code
    if code in (404, 410):
        return NotFound(f"{url}: the server has no such image (HTTP {code})")
    if code in (401, 403):
        return InvalidArgument(f"{url}: the server refused the credentials (HTTP {code})")
    if 300 <= code < 400:
        return InvalidArgument(f"{url}: too many redirects, or a redirect loop (HTTP {code})")
    if code in (408, 425, 429) or code >= 500:
        return Unavailable(f"{url}: the server cannot serve the image now (HTTP {code} {err.reason})")
    return InvalidArgument(f"{url}: the server refused the request (HTTP {code} {err.reason})")
