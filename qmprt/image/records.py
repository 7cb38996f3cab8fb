"""What the store answers with (``ImageRecord``, ``FsUsage``) and what the layers above use of it (``Images``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from qmprt.image.boot import BootFiles
from qmprt.image.fetch import Progress, PullAuth


@dataclass(frozen=True)
class ImageRecord:
    digest: str  # "sha256:<64 hex>" of the stored file's bytes
    path: str  # <root>/sha256/<hex>, read-only
    format: str  # "qcow2" | "raw", verified with qemu-img; pass it to QEMU, never let QEMU probe
    size_bytes: int
    virtual_size: int
    names: tuple[str, ...]  # sorted; empty for an image whose names were all moved elsewhere
    created_at_ns: int
    boot: BootFiles | None = None  # an operator-attached kernel for direct boot (qmprt.image.boot)


@dataclass(frozen=True)
class FsUsage:
    mountpoint: str  # mount point of the filesystem that holds the store
    used_bytes: int  # allocated by the store's files
    inodes_used: int  # files and directories of the store
    timestamp_ns: int


class Images(Protocol):
    """What the layers above need from the store; tests of those layers may use a fake of it."""

    async def pull(
        self, name: str, auth: PullAuth | None = None, progress: Progress | None = None
    ) -> ImageRecord: ...

    def resolve(self, ref: str) -> ImageRecord | None: ...

    def list(self) -> list[ImageRecord]: ...

    def remove(self, ref: str, in_use: Callable[[str], bool]) -> None: ...

    def fs_usage(self) -> FsUsage: ...

    def pull_progress(self, name: str) -> tuple[int, int | None] | None: ...
