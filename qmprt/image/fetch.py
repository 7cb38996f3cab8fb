"""Streaming an image from an http(s) or file URL into a file, hashing it on the way.

The transfer is blocking stdlib code (``urllib`` over ``http.client``, or a plain file read) run in a
worker thread; ``fetch`` is its asyncio face. Cancelling ``fetch`` (a client's deadline) sets an abort
flag that the worker checks between chunks and shuts down the worker's sockets, which wakes a read
blocked on a silent server at once; ``fetch`` then waits briefly for the worker before re-raising, so
the caller can delete the partial file knowing nothing writes to it any more.

A transfer is an error (Unavailable) when the connection drops, a read stalls longer than the transport
timeout, or the body ends before its Content-Length; InvalidArgument when the source is refused (a
status the server will not change its mind about, too large, an encoded body, a file outside the
allowed roots); NotFound for 404/410.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import http.client
import logging
import os
import ssl
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar

from qmprt.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from qmprt.image.httpclient import Abort, Aborted, http_error, opener
from qmprt.image.fetch_settings import FetchSettings

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
PROGRESS_LOG_INTERVAL_S = 5.0
PROGRESS_CALLBACK_INTERVAL_S = 0.25
ABORT_GRACE_S = 5.0
USER_AGENT = "qmprt"

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class PullAuth:
    """Credentials of a pull, as CRI's AuthConfig carries them: basic auth or a bearer token.

    Precedence: ``registry_token``, ``identity_token`` (each sent as ``Bearer``), ``username`` and
    ``password``, then ``auth`` (base64 ``user:pass``, sent as ``Basic``).
    """

    username: str = ""
    password: str = field(default="", repr=False)
    auth: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def header(self) -> str | None:
        """The Authorization header value, or None when there are no credentials."""
        if self.registry_token:
            return f"Bearer {self.registry_token}"
        if self.identity_token:
            return f"Bearer {self.identity_token}"
        if self.username or self.password:
            return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if self.auth:
            try:
                decoded = base64.b64decode(self.auth, validate=True)
            except (binascii.Error, ValueError) as err:
                raise InvalidArgument("auth is not base64") from err
            if b":" not in decoded:
                raise InvalidArgument("auth must be the base64 of user:password")
            return "Basic " + base64.b64encode(decoded).decode()
        return None


@dataclass(frozen=True)
class Fetched:
    digest: str  # "sha256:<hex>" of the bytes written
    size: int


def write_chunk(dest: BinaryIO, chunk: bytes, label: str) -> None:
    """``dest.write``, a full disk (or quota) being RESOURCE_EXHAUSTED rather than an internal error."""
    try:
        dest.write(chunk)
    except OSError as err:
        if err.errno in (28, 122):  # ENOSPC, EDQUOT
            raise ResourceExhausted(f"{label}: no space left for the image: {err}") from err
        raise


class _Copier:
    """Copies chunks into ``dest``, hashing, counting, reporting progress, checking the abort flag."""

    def __init__(
        self, dest: BinaryIO, abort: Abort, label: str, total: int | None, limit: int, progress: Progress | None
    ) -> None:
        self.dest = dest
        self.abort = abort
        self.label = label
        self.total = total
        self.limit = limit
        self.progress = progress
        self.hash = hashlib.sha256()
        self.done = 0
        self.started = time.monotonic()
        self._last_log = self.started
        self._last_report = 0.0

    def write(self, chunk: bytes) -> None:
        self.abort.check()
        self.done += len(chunk)
        if self.done > self.limit:
            raise InvalidArgument(f"{self.label}: the download exceeds the limit of {self.limit} bytes")
        self.hash.update(chunk)
        write_chunk(self.dest, chunk, self.label)
        now = time.monotonic()
        if now - self._last_log >= PROGRESS_LOG_INTERVAL_S:
            self._last_log = now
            log.info("%s", self.describe(now))
        if self.progress is not None and now - self._last_report >= PROGRESS_CALLBACK_INTERVAL_S:
            self._last_report = now
            self.progress(self.done, self.total)

    def describe(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-6) / 1e6
        of = f" of {self.total / (1 << 20):.1f} MiB" if self.total is not None else ""
        return f"pulling {self.label}: {self.done / (1 << 20):.1f} MiB{of} ({rate:.1f} MB/s)"

    def finish(self) -> Fetched:
        if self.progress is not None:
            self.progress(self.done, self.total)
        return Fetched(f"sha256:{self.hash.hexdigest()}", self.done)


def _check_space(dest: BinaryIO, needed: int, label: str) -> None:
    try:
        vfs = os.fstatvfs(dest.fileno())
    except OSError:
        return
    if vfs.f_bavail * vfs.f_frsize < needed:
        raise ResourceExhausted(f"{label}: {needed} bytes do not fit in the image store's free space")


def open_regular_file(path: str) -> BinaryIO:
    """Open ``path`` for reading, refusing anything but a regular file (without blocking on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise NotFound(f"{path} does not exist") from err
    except OSError as err:
        raise InvalidArgument(f"cannot open {path}: {err}") from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgument(f"{path} is not a regular file")
    return os.fdopen(fd, "rb", buffering=0)


def _within(path: str, roots: tuple[str, ...]) -> bool:
    for root in roots:
        real_root = os.path.realpath(root)
        if os.path.commonpath([path, real_root]) == real_root:
            return True
    return False


def copy_file(source: BinaryIO, copier: _Copier) -> Fetched:
    while True:
        chunk = source.read(CHUNK_BYTES)
        if not chunk:
            return copier.finish()
        copier.write(chunk)


def _fetch_file(url: str, dest: BinaryIO, copier_for: Callable[[int | None], _Copier], roots: tuple[str, ...]) -> Fetched:
    path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
    with open_regular_file(path) as source:
        # The path actually opened, symlinks resolved, is what must lie under an allowed root.
        opened = os.readlink(f"/proc/self/fd/{source.fileno()}")
        if not _within(opened, roots):
            raise InvalidArgument(
                f"{url}: file URLs may only read under the configured file roots ({', '.join(roots) or 'none'})"
            )
        size = os.fstat(source.fileno()).st_size
        copier = copier_for(size)
        if size > copier.limit:
            raise InvalidArgument(f"{url}: {size} bytes is above the download limit of {copier.limit} bytes")
        _check_space(dest, size, url)
        return copy_file(source, copier)


def _fetch_http(
    url: str,
    dest: BinaryIO,
    transport: FetchSettings,
    authorization: str | None,
    abort: Abort,
    copier_for: Callable[[int | None], _Copier],
) -> Fetched:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if authorization:
        if url.startswith("http://"):
            log.warning("sending credentials over plain http to %s", urllib.parse.urlsplit(url).netloc)
        request.add_unredirected_header("Authorization", authorization)
    url_opener = opener(transport, abort, authorization)
    try:
        response = url_opener.open(request, timeout=transport.timeout_s)
    except urllib.error.HTTPError as err:
        err.close()
        raise http_error(url, err) from err
    except urllib.error.URLError as err:
        abort.check()
        if isinstance(err.reason, ssl.SSLCertVerificationError):
            raise Unavailable(f"{url}: TLS verification failed: {err.reason.verify_message}") from err
        raise Unavailable(f"{url}: {err.reason}") from err
    except (OSError, http.client.HTTPException) as err:
        abort.check()
        raise Unavailable(f"{url}: {err}") from err
    with response:
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise InvalidArgument(f"{url}: the server sent a {encoding}-encoded body; qmprt needs the image itself")
        length_header = response.headers.get("Content-Length")
        total = int(length_header) if length_header and length_header.strip().isdigit() else None
        copier = copier_for(total)
        if total is not None:
            if total > copier.limit:
                raise InvalidArgument(f"{url}: {total} bytes is above the download limit of {copier.limit} bytes")
            _check_space(dest, total, url)
        try:
            while True:
                chunk = response.read1(CHUNK_BYTES)
                if not chunk:
                    break
                copier.write(chunk)
        except (OSError, http.client.HTTPException) as err:
            abort.check()
            raise Unavailable(f"{url}: the transfer broke after {copier.done} bytes: {err!r}") from err
        abort.check()
        if total is not None and copier.done != total:
            raise Unavailable(f"{url}: the connection closed after {copier.done} of {total} bytes")
        return copier.finish()


def _open_dest(dest: str | os.PathLike[str]) -> BinaryIO:
    return open(dest, "wb", buffering=0)


def _finish_dest(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def fetch_blocking(
    url: str,
    dest: str | os.PathLike[str],
    transport: FetchSettings,
    *,
    authorization: str | None = None,
    abort: Abort | None = None,
    progress: Progress | None = None,
    limit: int,
    file_roots: tuple[str, ...] = (),
    label: str | None = None,
) -> Fetched:
    """Copy ``url`` into the file ``dest`` (fsynced); the sha256 digest and size of what was written.

    Only this function opens and closes ``dest``, so a caller that gave up on it can delete the path
    without ever closing a descriptor the worker still writes to.
    """
    abort = abort or Abort()
    abort.check()
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    started = time.monotonic()
    with _open_dest(dest) as handle:

        def copier_for(total: int | None) -> _Copier:
            return _Copier(handle, abort, label or url, total, limit, progress)

        if scheme == "file":
            fetched = _fetch_file(url, handle, copier_for, file_roots)
        elif scheme in ("http", "https"):
            fetched = _fetch_http(url, handle, transport, authorization, abort, copier_for)
        else:
            raise InvalidArgument(f"{url}: only http, https and file URLs can be pulled")
        _finish_dest(handle)
    elapsed = time.monotonic() - started
    log.info(
        "pulled %s: %.1f MiB in %.2f s (%.1f MB/s)",
        label or url,
        fetched.size / (1 << 20),
        elapsed,
        fetched.size / max(elapsed, 1e-6) / 1e6,
    )
    return fetched


def copy_local(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], *, limit: int, label: str | None = None
) -> Fetched:
    """Copy a local regular file into ``dest`` (fsynced), hashing it: ``import_file``'s transfer."""
    with open_regular_file(os.fspath(source)) as reader, _open_dest(dest) as handle:
        size = os.fstat(reader.fileno()).st_size
        if size > limit:
            raise InvalidArgument(f"{source}: {size} bytes is above the size limit of {limit} bytes")
        _check_space(handle, size, os.fspath(source))
        fetched = copy_file(reader, _Copier(handle, Abort(), label or os.fspath(source), size, limit, None))
        _finish_dest(handle)
    return fetched


T = TypeVar("T")


async def run_abortable(
    work: Callable[[Abort, Progress], T],
    *,
    progress: Progress | None = None,
    executor: concurrent.futures.Executor | None = None,
    label: str,
) -> T:
    """``work(abort, report)`` in a worker thread. ``report`` calls ``progress`` on the event loop's
    thread; cancelling sets ``abort`` and waits briefly for the worker to stop before re-raising."""
    loop = asyncio.get_running_loop()
    abort = Abort()
    last_report = [0.0]

    def report(done: int, total: int | None) -> None:
        # At most every PROGRESS_CALLBACK_INTERVAL_S on the loop, and always the last (done == total).
        if progress is None or abort.is_set:
            return
        now = time.monotonic()
        if total is not None and done < total and now - last_report[0] < PROGRESS_CALLBACK_INTERVAL_S:
            return
        last_report[0] = now
        try:
            loop.call_soon_threadsafe(progress, done, total)
        except RuntimeError:  # the loop closed under a worker still finishing
            pass

    future = loop.run_in_executor(executor, work, abort, report)
    # The outcome is read here or, after a cancellation, deliberately dropped.
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        abort.set()
        done, _ = await asyncio.wait({future}, timeout=ABORT_GRACE_S)
        if not done:
            log.warning("the transfer of %s did not stop within %s s of its cancellation", label, ABORT_GRACE_S)
        raise
    except Aborted as err:  # set without a cancellation of this coroutine: treat as one
        raise asyncio.CancelledError() from err


async def fetch(
    url: str,
    dest: str | os.PathLike[str],
    transport: FetchSettings,
    *,
    authorization: str | None = None,
    progress: Progress | None = None,
    limit: int,
    file_roots: tuple[str, ...] = (),
    label: str | None = None,
    executor: concurrent.futures.Executor | None = None,
) -> Fetched:
    """``fetch_blocking`` in a worker thread; ``progress`` is called on the event loop's thread."""

    def work(abort: Abort, report: Progress) -> Fetched:
        return fetch_blocking(
            url,
            dest,
            transport,
            authorization=authorization,
            abort=abort,
            progress=report,
            limit=limit,
            file_roots=file_roots,
            label=label,
        )

    return await run_abortable(work, progress=progress, executor=executor, label=url)
