"""Downloads shared by concurrent pulls: one fetch and verification per content at a time.

A pull of content already being downloaded (the same URL and pin, or the same registry manifest)
joins that download instead of starting another.
The download runs as its own task, shielded from each pull: it is cancelled (and its temp file
deleted) only when the last pull waiting for it goes, so a client's deadline stops the download
unless another pull still wants it. What it yields is ``Verified``: a temp file that every check of
``inspect`` passed, for the store to publish (``ImageStore._publish``) while the download is held.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from qmprt.errors import InvalidArgument
from qmprt.image.fetch import Fetched, Progress, fetch
from qmprt.image.fetch_settings import FetchSettings
from qmprt.image.inspect import ImageInfo, inspect_image_async
from qmprt.image.reference import ImageReference
from qmprt.image.rules import ImageConfig

log = logging.getLogger(__name__)

FETCH_WORKERS = 4


@dataclass(frozen=True)
class Verified:
    temp_path: Path
    fetched: Fetched
    info: ImageInfo


FetchInto = Callable[[Path, Progress], Awaitable[Fetched]]  # fills the temp file, reporting bytes


@dataclass(eq=False)
class _Flight:
    """One download shared by every concurrent pull of the same content (a URL and pin, a manifest)."""

    key: tuple[str, ...]
    task: asyncio.Task[Verified] | None = None
    temp_path: Path | None = None
    waiters: int = 0
    listeners: list[Progress] = field(default_factory=list)

    def emit(self, done: int, total: int | None) -> None:
        for listener in list(self.listeners):
            try:
                listener(done, total)
            except Exception:
                log.exception("an image pull progress callback failed")


class Downloads:
    """The downloads in progress of one store; temp files come from, and go back to, the store."""

    def __init__(
        self, config: ImageConfig, new_temp: Callable[[], Path], discard_temp: Callable[[Path | None], None]
    ) -> None:
        self._config = config
        self._new_temp = new_temp
        self._discard_temp = discard_temp
        self._flights: dict[tuple[str, ...], _Flight] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @contextlib.asynccontextmanager
    async def verified(
        self, key: tuple[str, ...], label: str, fetch_into: FetchInto, progress: Progress | None
    ) -> AsyncIterator[Verified]:
        """The verified download ``key`` names, joined or started, held (not deleted) inside the block."""
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight(key)
            flight.task = asyncio.create_task(self._fetch_and_verify(flight, label, fetch_into))
            self._flights[key] = flight
        else:
            log.info("pull of %s joins the download in progress", label)
        assert flight.task is not None
        flight.waiters += 1
        if progress is not None:
            flight.listeners.append(progress)
        try:
            yield await asyncio.shield(flight.task)
        finally:
            if progress is not None:
                flight.listeners.remove(progress)
            flight.waiters -= 1
            if flight.waiters == 0:
                if self._flights.get(key) is flight:
                    del self._flights[key]
                if not flight.task.done():
                    flight.task.cancel()
                    await asyncio.wait({flight.task})
                self._discard_temp(flight.temp_path)

    def url_fetch(
        self, url: str, settings: FetchSettings, reference: ImageReference, authorization: str | None, label: str
    ) -> FetchInto:
        """How a URL pull fills its temp file: the fetch, then the pin (the content's own digest) checked."""

        async def fetch_into(temp: Path, report: Progress) -> Fetched:
            fetched = await fetch(
                url,
                temp,
                settings,
                authorization=authorization,
                progress=report,
                limit=self._config.download_limit,
                file_roots=self._config.file_roots,
                label=label,
                executor=self.executor(),
            )
            check_pin(reference, fetched)
            return fetched

        return fetch_into

    async def _fetch_and_verify(self, flight: _Flight, label: str, fetch_into: FetchInto) -> Verified:
        temp = self._new_temp()
        flight.temp_path = temp
        try:
            log.info("pulling %s", label)
            fetched = await fetch_into(temp, flight.emit)
            info = await inspect_image_async(
                temp, self._config.max_virtual_size_bytes, self._config.qemu_img, self._config.qemu_img_timeout_s
            )
            return Verified(temp, fetched, info)
        except BaseException as err:
            self._discard_temp(temp)
            if isinstance(err, asyncio.CancelledError):
                log.info("pull of %s cancelled; partial download deleted", label)
            raise

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(FETCH_WORKERS, thread_name_prefix="qmprt-image-fetch")
        return self._executor

    def close(self) -> None:
        """Let the download threads go (downloads in progress are cancelled by their pulls)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def check_pin(reference: ImageReference, fetched: Fetched) -> None:
    if reference.digest is not None and fetched.digest != reference.digest:
        raise InvalidArgument(
            f"image {reference.original!r}: the content's digest is {fetched.digest}, not the pinned {reference.digest}"
        )
