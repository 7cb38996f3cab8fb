"""Finding a containerDisk's disk in real tar layers (uncompressed, gzip, zstd) the way an unpacker would."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from qmprt.errors import InvalidArgument
from qmprt.image.ocilayers import MAX_DISK_ENTRIES, Layer, copy_disk, find_disk

TAR = "application/vnd.oci.image.layer.v1.tar"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

Entry = tuple[str, bytes | str | None]  # (name, bytes: file, "->target": symlink, "=>target": hard link, None: directory)


def layer(tmp_path: Path, entries: list[Entry], media_type: str = TAR) -> Layer:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            data = b""
            if content is None:
                info.type = tarfile.DIRTYPE
            elif isinstance(content, str) and content.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
            elif isinstance(content, str) and content.startswith("=>"):
                info.type, info.linkname = tarfile.LNKTYPE, content[2:]
            else:
                data = content if isinstance(content, bytes) else content.encode()
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    blob = buffer.getvalue()
    if media_type in (GZIP, DOCKER_GZIP):
        blob = gzip.compress(blob)
    elif media_type == ZSTD:
        blob = zstandard.ZstdCompressor().compress(blob)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    path = tmp_path / digest.replace(":", "-")
    path.write_bytes(blob)
    return Layer(path, media_type, digest)


def disk_bytes(layers: list[Layer], tmp_path: Path, max_bytes: int = 1 << 20) -> tuple[str, bytes]:
    entry = find_disk(layers)
    with open(tmp_path / "out", "wb") as out:
        size = copy_disk(layers, entry, out, max_bytes)
    data = (tmp_path / "out").read_bytes()
    assert size == len(data)
    return entry.name, data


@pytest.mark.parametrize("media_type", [TAR, GZIP, ZSTD, DOCKER_GZIP])
def test_the_one_disk_is_found_in_every_compression(tmp_path: Path, media_type: str) -> None:
    base = layer(tmp_path, [("disk", None), ("disk/tiny.qcow2", b"QFI\xfb" + b"x" * 5000), ("etc/os-release", b"x")], media_type)
    assert disk_bytes([base], tmp_path) == ("tiny.qcow2", b"QFI\xfb" + b"x" * 5000)


@pytest.mark.parametrize("prefix", ["", "./", "/"])
def test_member_names_are_normalised(tmp_path: Path, prefix: str) -> None:
    assert disk_bytes([layer(tmp_path, [(f"{prefix}disk/a.img", b"raw")])], tmp_path) == ("a.img", b"raw")


def test_an_upper_layer_replaces_the_disk(tmp_path: Path) -> None:
    lower = layer(tmp_path, [("disk/a.qcow2", b"old")])
    upper = layer(tmp_path, [("disk/a.qcow2", b"new")], GZIP)
    assert disk_bytes([lower, upper], tmp_path) == ("a.qcow2", b"new")


def test_whiteouts_hide_lower_files_only(tmp_path: Path) -> None:
    lower = layer(tmp_path, [("disk/old.qcow2", b"old")])
    upper = layer(tmp_path, [("disk/.wh.old.qcow2", b""), ("disk/new.qcow2", b"new")])
    assert disk_bytes([lower, upper], tmp_path) == ("new.qcow2", b"new")
    # A layer's whiteout of a name does not hide the same layer's own file of that name.
    same = layer(tmp_path, [("disk/new.qcow2", b"kept"), ("disk/.wh.new.qcow2", b"")])
    assert disk_bytes([lower, upper, same], tmp_path) == ("new.qcow2", b"kept")


def test_an_opaque_whiteout_clears_lower_layers(tmp_path: Path) -> None:
    lower = layer(tmp_path, [("disk/a.qcow2", b"a"), ("disk/b.qcow2", b"b")])
    upper = layer(tmp_path, [("disk/c.raw", b"c"), ("disk/.wh..wh..opq", b"")])
    assert disk_bytes([lower, upper], tmp_path) == ("c.raw", b"c")


def test_disk_replaced_by_a_file_or_whited_out_leaves_no_disk(tmp_path: Path) -> None:
    lower = layer(tmp_path, [("disk/a.qcow2", b"a")])
    for upper_entries in ([("disk", b"not a directory")], [(".wh.disk", b"")]):
        with pytest.raises(InvalidArgument, match="no disk under /disk/"):
            find_disk([lower, layer(tmp_path, upper_entries)])
    # ... and a later layer may bring one again.
    again = layer(tmp_path, [("disk", None), ("disk/b.qcow2", b"b")])
    assert disk_bytes([lower, layer(tmp_path, [(".wh.disk", b"")]), again], tmp_path) == ("b.qcow2", b"b")


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([("etc/hostname", b"x")], "no disk under /disk/"),
        ([("disk/a.qcow2", b"a"), ("disk/b.qcow2", b"b")], "2 files under /disk/ \\(a.qcow2, b.qcow2\\)"),
        ([("disk/a.qcow2", "->/etc/shadow")], "is a symlink"),
        ([("etc/shadow", b"s"), ("disk/a.qcow2", "=>etc/shadow")], "is a hard link"),
        ([("disk/../../x", b"a")], "points outside"),
    ],
    ids=["none", "two", "symlink", "hardlink-outside", "escape"],
)
def test_what_is_not_one_regular_disk_is_refused(tmp_path: Path, entries: list[Entry], words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        find_disk([layer(tmp_path, entries)])


def test_a_hard_link_to_a_disk_file_is_that_file(tmp_path: Path) -> None:
    lower = layer(tmp_path, [("disk/a.qcow2", b"content")])
    upper = layer(tmp_path, [("disk/b.qcow2", "=>disk/a.qcow2"), ("disk/.wh.a.qcow2", b"")])
    assert disk_bytes([lower, upper], tmp_path) == ("b.qcow2", b"content")


def test_bad_layers_are_invalid_argument(tmp_path: Path) -> None:
    good = layer(tmp_path, [("disk/a", b"a")], GZIP)
    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(good.path.read_bytes()[:20] + b"\0" * 64)
    with pytest.raises(InvalidArgument, match="is not a valid"):
        find_disk([Layer(corrupt, GZIP, good.digest)])
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x28\xb5\x2f\xfd" + b"\xff" * 100)
    with pytest.raises(InvalidArgument, match="is not a valid"):
        find_disk([Layer(garbage, ZSTD, good.digest)])
    with pytest.raises(InvalidArgument, match="media type 'application/x-foo'"):
        find_disk([Layer(good.path, "application/x-foo", good.digest)])


def test_sizes_and_entry_counts_are_bounded(tmp_path: Path) -> None:
    big = [layer(tmp_path, [("disk/a.raw", b"x" * 4096)])]
    with pytest.raises(InvalidArgument, match="more than the limit"), open(tmp_path / "out", "wb") as out:
        copy_disk(big, find_disk(big), out, 4095)
    many = [(f"disk/f{i}", b"") for i in range(MAX_DISK_ENTRIES + 1)]
    with pytest.raises(InvalidArgument, match=f"more than {MAX_DISK_ENTRIES} entries"):
        find_disk([layer(tmp_path, many)])
