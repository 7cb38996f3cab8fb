"""The store's index (image metadata and names) as every process that opens the store sees it.

``qmprt serve`` and ``qmprt ctl image import`` may open one store at the same time. What keeps them
consistent:

- Every change (publish, name changes, removal, ``collect_partials``) runs inside ``exclusive()``: the
  store's thread lock, then ``flock(LOCK_EX)`` on the store's root directory, then a reload of whatever
  another process changed since this one last looked. A change therefore starts from the current disk
  state and never writes back a stale ``names.json``. The root directory itself is the lock (not a lock
  file in it): nothing can delete it under a holder, and the layout keeps its four entries.
- ``names.json`` is rewritten (a new inode, by rename) by every change of the store, also one that
  changes no name (an image without names removed), so its (inode, mtime, size) is a change signature.
  Reads (``current()``) compare it with the signature last loaded and reload under ``LOCK_SH`` when it
  moved: a running server sees an image another process imported on its next lookup, without a restart.
- Metadata is written once, before its image is renamed into ``sha256/``, and both happen under the
  exclusive lock, so a reload never sees an image without metadata (except after a crash, which
  ``collect_partials`` handles).

The lock is held for milliseconds (renames, small JSON writes, fsyncs), never across a download or a
``qemu-img`` run, so taking it on the event loop's thread is acceptable.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmprt.errors import InternalError, NotFound
from qmprt.image.names import NamesIndex
from qmprt.image.overlay import ImageFormat
from qmprt.state import read_json

log = logging.getLogger(__name__)

META_VERSION = 1

_Signature = tuple[int, int, int] | None


@dataclass(frozen=True)
class ImageMeta:
    format: ImageFormat
    virtual_size: int
    size_bytes: int
    created_at_ns: int

    def document(self, digest: str) -> dict[str, Any]:
        return {
            "version": META_VERSION,
            "digest": digest,
            "format": self.format,
            "virtual_size": self.virtual_size,
            "size_bytes": self.size_bytes,
            "created_at_ns": self.created_at_ns,
        }

    @classmethod
    def load(cls, path: Path) -> ImageMeta:
        document = read_json(path)
        try:
            image_format = document["format"]
            if image_format not in ("qcow2", "raw"):
                raise ValueError(f"format {image_format!r}")
            return cls(
                image_format, int(document["virtual_size"]), int(document["size_bytes"]), int(document["created_at_ns"])
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InternalError(f"{path} is not valid image metadata: {err}") from err


class StoreIndex:
    """``images`` (hex digest → metadata) and ``names``, kept in step with the disk across processes."""

    images: dict[str, ImageMeta]
    names: NamesIndex

    def __init__(self, root: Path, blobs: Path, meta_dir: Path) -> None:
        self.root = root
        self._blobs = blobs
        self._meta_dir = meta_dir
        self._names_path = root / "names.json"
        self._lock = threading.RLock()
        self._depth = 0  # nesting of exclusive() in the thread that holds _lock
        self._signature: _Signature = None
        self.images = {}
        with self._flock(fcntl.LOCK_SH):
            self._load(first=True)

    def meta_path(self, hexdigest: str) -> Path:
        return self._meta_dir / f"{hexdigest}.json"

    @contextlib.contextmanager
    def _flock(self, operation: int) -> Iterator[None]:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)  # the last descriptor of the open file description: the lock goes with it

    def _disk_signature(self) -> _Signature:
        try:
            stat = os.stat(self._names_path)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _load(self, first: bool = False) -> None:
        """Re-read names.json and the list of stored images (metadata is immutable: only new files are read)."""
        # The signature is taken first: a change made while this runs moves it again, so it is seen next time.
        self._signature = self._disk_signature()
        images: dict[str, ImageMeta] = {}
        for blob in self._blobs.iterdir():
            known = self.images.get(blob.name)
            if known is not None:
                images[blob.name] = known
                continue
            try:
                images[blob.name] = ImageMeta.load(self.meta_path(blob.name))
            except NotFound:
                continue  # an image whose verification is unknown: collect_partials deletes it
            except InternalError as err:
                if first:
                    log.error("image %s is ignored: %s", blob.name, err)
        self.images = images
        self.names = NamesIndex(self._names_path, stored=images, quiet=not first)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Hold the thread lock over an index that reflects the disk (reloaded if another process changed it)."""
        with self._lock:
            if self._disk_signature() != self._signature:
                if self._depth:
                    self._load()
                else:
                    with self._flock(fcntl.LOCK_SH):
                        self._load()
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store against every thread and process, over a current index; re-entrant."""
        with self._lock:
            with contextlib.ExitStack() as held:
                if self._depth == 0:
                    held.enter_context(self._flock(fcntl.LOCK_EX))
                    if self._disk_signature() != self._signature:
                        self._load()
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                    self._signature = self._disk_signature()  # this process's own writes are known

    def touch_names(self) -> None:
        """Rewrite names.json unchanged, so other processes notice a change that moved no name."""
        self.names.save()
