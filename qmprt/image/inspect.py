"""Is this file a disk image qmprt may boot? Format sniffing, header checks, ``qemu-img`` verdicts.

Order of the checks, cheapest and least trusting first:

1. ``sniff_format``: the first bytes (and the last 512, where VHD and DMG keep their footer) name the
   format. QCOW2 magic → qcow2; another known magic (VMDK, VHD/VHDX, VDI, QED, LUKS, Parallels, bochs,
   cloop, DMG, or a compressed archive) → refused as unsupported; anything else → raw.
2. ``check_qcow2_header``: the QCOW2 header is read by qmprt itself, so a backing file, an external data
   file or encryption is refused before ``qemu-img`` opens anything a hostile header points at.
3. ``qemu-img info --output=json -f <format>``: the format is always named, never probed. ``judge_info``
   refuses a backing file, an external data file, encryption, a corrupt or dirty flag, a format other
   than the one named, and a virtual size above the limit.
4. ``qemu-img check -f qcow2 --output=json`` for qcow2: ``judge_check`` refuses corruptions and checks
   that could not complete (leaked clusters alone are harmless and accepted).

Every refusal is InvalidArgument; a ``qemu-img`` that runs past its timeout is DeadlineExceeded, one
that cannot be run InternalError. ``qemu-img`` reads a file in the store's temp directory that nothing
else writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qmprt.errors import DeadlineExceeded, InternalError, InvalidArgument
from qmprt.image.overlay import ImageFormat

log = logging.getLogger(__name__)

HEADER_BYTES = 4096
TRAILER_BYTES = 512
QCOW2_MAGIC = b"QFI\xfb"

# (offset, magic, what it is); offsets are from the start of the file.
_FOREIGN_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"KDMV", "VMDK"),
    (0, b"COWD", "VMDK (ESX sparse)"),
    (0, b"# Disk DescriptorFile", "VMDK descriptor"),
    (0, b"conectix", "VHD"),
    (0, b"vhdxfile", "VHDX"),
    (64, b"\x7f\x10\xda\xbe", "VDI"),
    (0, b"<<< Oracle VM VirtualBox Disk Image >>>", "VDI"),
    (0, b"<<< Sun VirtualBox Disk Image >>>", "VDI"),
    (0, b"<<< innotek VirtualBox Disk Image >>>", "VDI"),
    (0, b"QED\x00", "QED"),
    (0, b"LUKS\xba\xbe", "LUKS"),
    (0, b"WithoutFreeSpace", "Parallels"),
    (0, b"WithouFreSpacExt", "Parallels"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop", "cloop"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"\xfd7zXZ\x00", "an xz archive"),
    (0, b"\x28\xb5\x2f\xfd", "a zstd archive"),
)
_FOREIGN_TRAILERS: tuple[tuple[bytes, str], ...] = (
    (b"conectix", "VHD (fixed)"),
    (b"koly", "DMG"),
)


def sniff_format(header: bytes, trailer: bytes = b"") -> ImageFormat:
    """qcow2 or raw from a file's first bytes (and last 512); InvalidArgument for any other format."""
    if header.startswith(QCOW2_MAGIC):
        return "qcow2"
    for offset, magic, what in _FOREIGN_MAGICS:
        if header[offset : offset + len(magic)] == magic:
            raise InvalidArgument(f"the image is {what}; only qcow2 and raw images are supported")
    if header[:3] == b"BZh" and header[3:4].isdigit() and header[4:10] == b"1AY&SY":
        raise InvalidArgument("the image is a bzip2 archive; only qcow2 and raw images are supported")
    if len(trailer) >= TRAILER_BYTES:
        for magic, what in _FOREIGN_TRAILERS:
            if trailer[-TRAILER_BYTES:].startswith(magic):
                raise InvalidArgument(f"the image is {what}; only qcow2 and raw images are supported")
    return "raw"


# QCOW2 header fields (big-endian), see docs/interop/qcow2.txt in QEMU.
_QCOW2_EXT_DATA_FILE = 0x44415441
_QCOW2_EXT_CRYPTO = 0x0537BE77
_INCOMPAT_CORRUPT = 1 << 1
_INCOMPAT_DATA_FILE = 1 << 2
_INCOMPAT_KNOWN = (1 << 5) - 1  # dirty, corrupt, data file, compression type, extended L2


def check_qcow2_header(header: bytes, max_virtual_size: int) -> int:
    """Refuse what a qcow2 header alone shows; return the virtual size it declares."""
    if len(header) < 72:
        raise InvalidArgument("the qcow2 header is truncated")
    (version,) = struct.unpack_from(">I", header, 4)
    if version not in (2, 3):
        raise InvalidArgument(f"qcow2 version {version} is not supported (2 and 3 are)")
    backing_offset, backing_size = struct.unpack_from(">QI", header, 8)
    if backing_offset != 0 or backing_size != 0:
        raise InvalidArgument("the image has a backing file; qmprt takes self-contained images only")
    (virtual_size,) = struct.unpack_from(">Q", header, 24)
    (crypt_method,) = struct.unpack_from(">I", header, 32)
    if crypt_method != 0:
        raise InvalidArgument("the image is encrypted; qmprt cannot boot it")
    if virtual_size > max_virtual_size:
        raise InvalidArgument(f"the image's virtual size {virtual_size} is above the limit of {max_virtual_size} bytes")
    if version == 2:
        return int(virtual_size)
    if len(header) < 104:
        raise InvalidArgument("the qcow2 v3 header is truncated")
    (incompatible,) = struct.unpack_from(">Q", header, 72)
    if incompatible & _INCOMPAT_DATA_FILE:
        raise InvalidArgument("the image uses an external data file; qmprt takes self-contained images only")
    if incompatible & _INCOMPAT_CORRUPT:
        raise InvalidArgument("the image is marked corrupt")
    if incompatible & ~_INCOMPAT_KNOWN:
        raise InvalidArgument(f"the image uses unknown incompatible qcow2 features ({incompatible:#x})")
    (header_length,) = struct.unpack_from(">I", header, 100)
    offset = header_length
    # Header extensions: type, length, data padded to 8 bytes, ending with type 0.
    while offset + 8 <= len(header):
        ext_type, ext_length = struct.unpack_from(">II", header, offset)
        if ext_type == 0:
            break
        if ext_type == _QCOW2_EXT_DATA_FILE:
            raise InvalidArgument("the image names an external data file; qmprt takes self-contained images only")
        if ext_type == _QCOW2_EXT_CRYPTO:
            raise InvalidArgument("the image is encrypted; qmprt cannot boot it")
        offset += 8 + ((ext_length + 7) & ~7)
    return int(virtual_size)


@dataclass(frozen=True)
class ImageInfo:
    """What the checks established: the verified format and the virtual size."""

    format: ImageFormat
    virtual_size: int


def judge_info(info: Mapping[str, Any], expected_format: ImageFormat, max_virtual_size: int) -> ImageInfo:
    """Refuse what ``qemu-img info --output=json -f <expected_format>`` shows to be unsafe."""
    reported = info.get("format")
    if reported != expected_format:
        raise InvalidArgument(f"qemu-img reads the image as {reported!r}, not the {expected_format} it was named as")
    for key in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        if key in info:
            raise InvalidArgument(
                f"the image has a backing file ({info.get('backing-filename')!r}); "
                "qmprt takes self-contained images only"
            )
    specific = info.get("format-specific")
    data: Mapping[str, Any] = {}
    if isinstance(specific, Mapping) and isinstance(specific.get("data"), Mapping):
        data = specific["data"]
    if "data-file" in data or "data-file-raw" in data:
        raise InvalidArgument(
            f"the image uses an external data file ({data.get('data-file')!r}); qmprt takes self-contained images only"
        )
    if info.get("encrypted") or "encrypt" in data:
        raise InvalidArgument("the image is encrypted; qmprt cannot boot it")
    if data.get("corrupt"):
        raise InvalidArgument("the image is marked corrupt")
    if info.get("dirty-flag"):
        raise InvalidArgument("the image was not closed cleanly (dirty flag); repair it with qemu-img check -r all")
    virtual_size = info.get("virtual-size")
    if not isinstance(virtual_size, int) or isinstance(virtual_size, bool) or virtual_size <= 0:
        raise InvalidArgument(f"qemu-img reports no usable virtual size ({virtual_size!r})")
    if virtual_size > max_virtual_size:
        raise InvalidArgument(f"the image's virtual size {virtual_size} is above the limit of {max_virtual_size} bytes")
    return ImageInfo(expected_format, virtual_size)


def judge_check(returncode: int, stdout: str, stderr: str) -> None:
    """Refuse a qcow2 that ``qemu-img check --output=json`` finds corrupt or cannot check.

    Exit codes: 0 clean, 1 check not completed, 2 corruptions, 3 leaked clusters only, 63 unsupported.
    """
    report: Mapping[str, Any] = {}
    try:
        parsed = json.loads(stdout) if stdout.strip() else {}
        if isinstance(parsed, Mapping):
            report = parsed
    except json.JSONDecodeError:
        pass
    corruptions = report.get("corruptions", 0)
    check_errors = report.get("check-errors", 0)
    detail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if returncode == 2 or corruptions:
        raise InvalidArgument(f"qemu-img check finds the image corrupt ({corruptions} corruptions)")
    if returncode not in (0, 3) or check_errors:
        raise InvalidArgument(f"qemu-img check could not check the image (exit {returncode}): {detail}")
    if returncode == 3:
        log.info("image has %s leaked clusters (harmless)", report.get("leaks", "some"))


def read_ends(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """The first HEADER_BYTES and the last TRAILER_BYTES of a file."""
    with open(path, "rb") as handle:
        header = handle.read(HEADER_BYTES)
        size = os.fstat(handle.fileno()).st_size
        trailer = b""
        if size >= TRAILER_BYTES:
            handle.seek(size - TRAILER_BYTES)
            trailer = handle.read(TRAILER_BYTES)
    return header, trailer


def _precheck(path: str | os.PathLike[str], max_virtual_size: int) -> ImageFormat:
    header, trailer = read_ends(path)
    if not header:
        raise InvalidArgument("the image is empty")
    image_format = sniff_format(header, trailer)
    if image_format == "qcow2":
        check_qcow2_header(header, max_virtual_size)
    return image_format


def _info_argv(qemu_img: str, path: str | os.PathLike[str], image_format: ImageFormat) -> list[str]:
    return [qemu_img, "info", "--output=json", "-f", image_format, str(path)]


def _check_argv(qemu_img: str, path: str | os.PathLike[str]) -> list[str]:
    return [qemu_img, "check", "-f", "qcow2", "--output=json", str(path)]


def _parse_info(returncode: int, stdout: str, stderr: str, image_format: ImageFormat) -> Mapping[str, Any]:
    if returncode != 0:
        raise InvalidArgument(f"qemu-img cannot open the image as {image_format}: {stderr.strip()}")
    try:
        info = json.loads(stdout)
    except json.JSONDecodeError as err:
        raise InternalError(f"qemu-img info printed no JSON: {stdout[:200]!r}") from err
    if not isinstance(info, Mapping):
        raise InternalError("qemu-img info printed JSON that is not an object")
    return info


def _run(argv: list[str], timeout_s: float) -> tuple[int, str, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise DeadlineExceeded(f"{argv[0]} {argv[1]} did not finish in {timeout_s} s") from err
    except OSError as err:
        raise InternalError(f"cannot run {argv[0]}: {err}") from err
    return done.returncode, done.stdout, done.stderr


async def _run_async(argv: list[str], timeout_s: float) -> tuple[int, str, str]:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as err:
        raise InternalError(f"cannot run {argv[0]}: {err}") from err
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError as err:
        raise DeadlineExceeded(f"{argv[0]} {argv[1]} did not finish in {timeout_s} s") from err
    finally:
        # Cancelled or timed out: the process must not outlive the pull that started it.
        if process.returncode is None:
            process.kill()
            await asyncio.shield(process.wait())
    assert process.returncode is not None
    return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


def inspect_image(
    path: str | os.PathLike[str], max_virtual_size: int, qemu_img: str = "qemu-img", timeout_s: float = 60.0
) -> ImageInfo:
    """Run every check on ``path``; the verified format and virtual size, or InvalidArgument."""
    image_format = _precheck(path, max_virtual_size)
    info = judge_info(
        _parse_info(*_run(_info_argv(qemu_img, path, image_format), timeout_s), image_format),
        image_format,
        max_virtual_size,
    )
    if image_format == "qcow2":
        judge_check(*_run(_check_argv(qemu_img, path), timeout_s))
    return info


async def inspect_image_async(
    path: str | os.PathLike[str], max_virtual_size: int, qemu_img: str = "qemu-img", timeout_s: float = 60.0
) -> ImageInfo:
    """``inspect_image`` without blocking the event loop; cancelling it kills ``qemu-img``."""
    image_format = await asyncio.to_thread(_precheck, path, max_virtual_size)
    info = judge_info(
        _parse_info(*await _run_async(_info_argv(qemu_img, path, image_format), timeout_s), image_format),
        image_format,
        max_virtual_size,
    )
    if image_format == "qcow2":
        judge_check(*await _run_async(_check_argv(qemu_img, path), timeout_s))
    return info
