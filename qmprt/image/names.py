"""The names index, ``images/names.json``: ``{name: "sha256:<hex>"}``, many names per digest.

Written whole and atomically (``state.write_json_atomic``) before the in-memory copy changes, so a
crash leaves the old or the new index. Not locked here: the store's index (``index.py``) serialises
every change across threads and processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Container
from pathlib import Path

from qmprt.errors import InternalError, NotFound
from qmprt.image.reference import digest_hex, is_digest
from qmprt.state import read_json, write_json_atomic

log = logging.getLogger(__name__)


class NamesIndex:
    def __init__(
        self, path: str | os.PathLike[str], stored: Container[str] | None = None, *, quiet: bool = False
    ) -> None:
        """Load ``path`` (absent: empty); with ``stored`` (hex digests), drop names of missing images.

        ``quiet``: drop them without a warning (a reload that raced a removal in another process).
        """
        self.path = Path(path)
        try:
            document = read_json(self.path)
        except NotFound:
            document = {}
        if not isinstance(document, dict) or not all(
            isinstance(name, str) and isinstance(digest, str) and is_digest(digest)
            for name, digest in document.items()
        ):
            raise InternalError(f"{self.path} is not a mapping of names to sha256 digests")
        self._names: dict[str, str] = dict(document)
        if stored is not None:
            for name, digest in list(self._names.items()):
                if digest_hex(digest) not in stored:
                    level = logging.DEBUG if quiet else logging.WARNING
                    log.log(level, "image name %s points at %s, which is not in the store: dropped", name, digest)
                    del self._names[name]

    def get(self, name: str) -> str | None:
        return self._names.get(name)

    def names_for(self, digest: str) -> tuple[str, ...]:
        return tuple(sorted(name for name, target in self._names.items() if target == digest))

    def as_dict(self) -> dict[str, str]:
        return dict(self._names)

    def save(self) -> None:
        """Write the index as it is (a new file: other processes see that the store changed)."""
        self._replace(dict(self._names))

    def _replace(self, names: dict[str, str]) -> None:
        write_json_atomic(self.path, names)
        self._names = names

    def set(self, name: str, digest: str) -> None:
        if not is_digest(digest):
            raise InternalError(f"{digest!r} is not a sha256 digest")
        if self._names.get(name) != digest:
            self._replace({**self._names, name: digest})

    def remove_digest(self, digest: str) -> tuple[str, ...]:
        """Drop every name of ``digest``; the names dropped."""
        dropped = self.names_for(digest)
        if dropped:
            self._replace({key: value for key, value in self._names.items() if value != digest})
        return dropped
