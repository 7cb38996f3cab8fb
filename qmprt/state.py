"""Atomic JSON files: metadata written once, status replaced atomically.

Every write goes to a temp file in the same directory, is fsynced, renamed over the target and the
directory fsynced, so a reader (or a qmprt restarted after a crash) sees either the old or the new
document, never a half-written one. Files are 0600, directories 0700.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from qmprt.errors import AlreadyExists, InternalError, NotFound

T = TypeVar("T")

FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) as a 0700 directory; tighten it if it already exists."""
    directory = Path(path)
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o777 != DIR_MODE:
        directory.chmod(DIR_MODE)
    return directory


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike[str], document: Any, *, exclusive: bool = False) -> None:
    """Replace ``path`` with ``document`` atomically; with ``exclusive``, refuse an existing file."""
    target = Path(path)
    if exclusive and target.exists():
        raise AlreadyExists(f"{target} already exists")
    data = json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:  # a nearly full disk takes part of a write; the next one raises ENOSPC
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            # link() fails if the target appeared meanwhile: metadata is written exactly once.
            try:
                os.link(tmp, target)
            except FileExistsError as err:
                raise AlreadyExists(f"{target} already exists") from err
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def read_json(path: str | os.PathLike[str]) -> Any:
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except FileNotFoundError as err:
        raise NotFound(f"{path} does not exist") from err
    except json.JSONDecodeError as err:
        raise InternalError(f"{path} is not valid JSON: {err}") from err


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> None:
    """Delete ``.*.tmp`` leftovers of writes interrupted by a crash."""
    for entry in Path(directory).glob(".*.tmp"):
        entry.unlink(missing_ok=True)


class StatusFile(Generic[T]):
    """A status document with one writer: ``update(fn)`` persists before memory changes.

    ``encode``/``decode`` convert between the in-memory value (usually a frozen dataclass) and JSON.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        initial: T,
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
    ) -> None:
        self.path = Path(path)
        self._encode = encode
        self._decode = decode
        self._lock = threading.Lock()
        self._value = initial

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        initial: T,
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
    ) -> StatusFile[T]:
        status = cls(path, initial, encode, decode)
        write_json_atomic(status.path, encode(initial))
        return status

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], encode: Callable[[T], Any], decode: Callable[[Any], T]
    ) -> StatusFile[T]:
        return cls(path, decode(read_json(path)), encode, decode)

    @property
    def value(self) -> T:
        return self._value

    def update(self, change: Callable[[T], T]) -> T:
        with self._lock:
            new_value = change(self._value)
            write_json_atomic(self.path, self._encode(new_value))
            self._value = new_value
            return new_value
