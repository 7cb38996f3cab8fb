"""The disk of a containerDisk: found in an OCI image's layers the way an unpacker would, then copied out.

A containerDisk (KubeVirt's convention) is an OCI image whose filesystem holds exactly one disk file
directly under ``/disk/``. The filesystem is the layers applied in order, so a later layer may replace
the disk, delete it with a whiteout (``disk/.wh.NAME``), clear the directory with an opaque whiteout
(``disk/.wh..wh..opq``), or replace ``disk`` itself with a file. Whiteouts hide only what lower layers
put there (the OCI image spec), so a layer's own entries survive its whiteouts.

Only the entries under ``disk/`` are kept while the layers stream by (bounded: ``MAX_DISK_ENTRIES``),
and tarfile's member list is emptied as it goes, so a hostile layer of millions of entries costs time,
not memory. The layers' digests are checked by whoever downloaded them; this module reads them.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from qmprt.errors import InvalidArgument
from qmprt.image.fetch import write_chunk

DISK_DIR = "disk"
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_DISK_ENTRIES = 1000
COPY_CHUNK = 1 << 20

# Layer media types and their compression (OCI image spec, Docker image manifest v2 schema 2).
LAYER_COMPRESSION: dict[str, str | None] = {
    "application/vnd.oci.image.layer.v1.tar": None,
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": None,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": None,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}


@dataclass(frozen=True)
class Layer:
    """A downloaded (and digest-checked) layer blob."""

    path: Path
    media_type: str
    digest: str


@dataclass(frozen=True)
class DiskEntry:
    """Where a file under ``disk/`` comes from: a member of one layer."""

    name: str  # the file's name inside disk/
    layer: int  # index into the layers
    member: str  # the member's name in that layer's tar (a hard link's target, resolved)
    size: int
    kind: str  # "file", or what else it is ("symlink", "directory", "device" …) for the message


def compression_of(layer: Layer) -> str | None:
    if layer.media_type not in LAYER_COMPRESSION:
        known = ", ".join(sorted(LAYER_COMPRESSION))
        raise InvalidArgument(f"layer {layer.digest}: media type {layer.media_type!r} is not a layer type qmprt reads ({known})")
    return LAYER_COMPRESSION[layer.media_type]


@contextmanager
def open_layer(layer: Layer) -> Iterator[tarfile.TarFile]:
    """The layer as a tar stream, decompressed as its media type says; bad data is InvalidArgument."""
    compression = compression_of(layer)
    bad_data: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error)
    with open(layer.path, "rb") as raw:
        stream: IO[bytes] = raw
        if compression == "zstd":
            import zstandard  # only zstd layers need it

            bad_data += (zstandard.ZstdError,)
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        try:
            with tarfile.open(fileobj=stream, mode="r|gz" if compression == "gzip" else "r|") as tar:
                yield tar
        except bad_data as error:
            raise InvalidArgument(f"layer {layer.digest} is not a valid {layer.media_type}: {error}") from None


def normalise_member(name: str) -> str | None:
    """A member's path inside the image filesystem, or None when it points outside (``../x``)."""
    path = posixpath.normpath(name.lstrip("/") or ".")
    if path == ".":
        return ""
    return None if path == ".." or path.startswith("../") else path


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := tar.next()) is not None:
        tar.members = []  # type: ignore[attr-defined]  # stream mode keeps every member otherwise
        yield member


def _kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    if member.issym():
        return "symlink"
    if member.isdir():
        return "directory"
    if member.islnk():
        return "hard link"
    return "device or fifo"


def _layer_changes(index: int, tar: tarfile.TarFile, below: dict[str, DiskEntry]) -> tuple[bool, set[str], dict[str, DiskEntry]]:
    """What one layer does to ``disk/``: (opaque or replaced, names whited out, entries it adds)."""
    clear, whiteouts, added = False, set[str](), dict[str, DiskEntry]()
    for member in _members(tar):
        path = normalise_member(member.name)
        if path is None:
            raise InvalidArgument(f"layer {index}: member {member.name!r} points outside the image's filesystem")
        if path in (f".wh.{DISK_DIR}", DISK_DIR):
            if path == DISK_DIR and member.isdir():
                continue
            clear = True  # disk/ deleted, or replaced by a file: nothing below survives
            added.clear()
            continue
        directory, _, name = path.rpartition("/")
        if directory != DISK_DIR:
            continue
        if name == OPAQUE:
            clear = True
        elif name.startswith(WHITEOUT):
            whiteouts.add(name[len(WHITEOUT):])
        else:
            entry = DiskEntry(name, index, member.name, member.size, _kind(member))
            if member.islnk():  # resolved when it links to a regular file under disk/
                target_dir, _, target = (normalise_member(member.linkname) or "").rpartition("/")
                source = (added.get(target) or below.get(target)) if target_dir == DISK_DIR else None
                if source is not None and source.kind == "file":
                    entry = DiskEntry(name, source.layer, source.member, source.size, "file")
            added[name] = entry
            if len(added) > MAX_DISK_ENTRIES:
                raise InvalidArgument(f"layer {index}: more than {MAX_DISK_ENTRIES} entries under /{DISK_DIR}/")
    return clear, whiteouts, added


def disk_entries(layers: list[Layer]) -> dict[str, DiskEntry]:
    """The files directly under ``/disk/`` of the image the layers make, by name."""
    state: dict[str, DiskEntry] = {}
    for index, layer in enumerate(layers):
        with open_layer(layer) as tar:
            clear, whiteouts, added = _layer_changes(index, tar, state)
        if clear:
            state = {}
        for name in whiteouts:
            state.pop(name, None)
        state.update(added)
    return state


def find_disk(layers: list[Layer]) -> DiskEntry:
    """The one disk file of a containerDisk; InvalidArgument naming what is wrong otherwise."""
    entries = [entry for entry in disk_entries(layers).values() if entry.kind != "directory"]
    if not entries:
        raise InvalidArgument(f"the image has no disk under /{DISK_DIR}/ (a containerDisk holds exactly one disk file there)")
    if len(entries) > 1:
        names = ", ".join(sorted(entry.name for entry in entries)[:5])
        raise InvalidArgument(f"the image has {len(entries)} files under /{DISK_DIR}/ ({names}); a containerDisk holds exactly one")
    entry = entries[0]
    if entry.kind != "file":
        raise InvalidArgument(f"/{DISK_DIR}/{entry.name} is a {entry.kind}, not a regular file")
    return entry


def copy_disk(
    layers: list[Layer], entry: DiskEntry, destination: BinaryIO, max_bytes: int, on_chunk: Callable[[bytes], None] | None = None
) -> int:
    """Copy the disk's bytes into ``destination`` (flushed and fsynced); returns the size.

    ``on_chunk`` sees each chunk before it is written (to hash it, or to stop a cancelled copy)."""
    if entry.size > max_bytes:
        raise InvalidArgument(f"/{DISK_DIR}/{entry.name} is {entry.size} bytes, more than the limit of {max_bytes}")
    with open_layer(layers[entry.layer]) as tar:
        for member in _members(tar):
            if member.name == entry.member and member.isreg():
                source = tar.extractfile(member)
                assert source is not None
                copied = 0
                while chunk := source.read(COPY_CHUNK):
                    copied += len(chunk)
                    if copied > max_bytes:
                        raise InvalidArgument(f"/{DISK_DIR}/{entry.name} is more than the limit of {max_bytes} bytes")
                    if on_chunk is not None:
                        on_chunk(chunk)
                    write_chunk(destination, chunk, f"/{DISK_DIR}/{entry.name}")
                destination.flush()
                os.fsync(destination.fileno())
                return copied
    raise InvalidArgument(f"layer {layers[entry.layer].digest} no longer holds {entry.member!r}")
