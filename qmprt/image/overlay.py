"""Per-container qcow2 overlays on a read-only base image.

The base image's format is always named (``-F``): QEMU is never left to probe a format. An overlay is
one ``qemu-img create`` (milliseconds: it writes a header and an empty L1 table, no data); with
``size_bytes`` it is also the container's grown root disk, never smaller than the base (a smaller
overlay would cut off the end of the base's disk, so that is refused).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Literal

from qmprt.osutil import run_bounded
from qmprt.errors import DeadlineExceeded, InternalError, InvalidArgument

ImageFormat = Literal["qcow2", "raw"]

SECTOR = 512
QEMU_IMG_TIMEOUT_S = 60.0


def base_virtual_size(
    base: str | os.PathLike[str], base_format: ImageFormat, qemu_img: str = "qemu-img"
) -> int:
    """The virtual size of ``base`` read as ``base_format`` (one ``qemu-img info``)."""
    argv = [qemu_img, "info", "--output=json", "-f", base_format, str(base)]
    try:
        done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT_S)
        return int(json.loads(done.stdout)["virtual-size"])
    except subprocess.CalledProcessError as err:
        raise InternalError(f"qemu-img info {base} failed: {err.stderr.strip()}") from err
    except subprocess.TimeoutExpired as err:
        raise DeadlineExceeded(f"qemu-img info {base} did not finish in {QEMU_IMG_TIMEOUT_S} s") from err
    except (KeyError, TypeError, ValueError) as err:
        raise InternalError(f"qemu-img info {base} printed no virtual size") from err


def _overlay_argv(
    base: str | os.PathLike[str],
    base_format: ImageFormat,
    overlay: str | os.PathLike[str],
    size_bytes: int | None,
    qemu_img: str,
    virtual_size: int | None,
) -> list[str]:
    base_path = Path(base).resolve()
    if not base_path.is_file():
        raise InvalidArgument(f"base image {base_path} does not exist")
    if base_format not in ("qcow2", "raw"):
        raise InvalidArgument(f"base image format must be qcow2 or raw, not {base_format!r}")
    argv = [qemu_img, "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base_path), str(overlay)]
    if size_bytes is not None:
        if size_bytes <= 0:
            raise InvalidArgument(f"root disk size must be positive, not {size_bytes}")
        if virtual_size is None:
            virtual_size = base_virtual_size(base_path, base_format, qemu_img)
        if size_bytes < virtual_size:
            raise InvalidArgument(
                f"root disk size {size_bytes} is below the image's virtual size {virtual_size}; disks only grow"
            )
        # qcow2 sizes are whole sectors: round up, never down.
        argv.append(str(-(-size_bytes // SECTOR) * SECTOR))
    return argv


def create_overlay(
    base: str | os.PathLike[str],
    base_format: ImageFormat,
    overlay: str | os.PathLike[str],
    size_bytes: int | None = None,
    qemu_img: str = "qemu-img",
    *,
    base_virtual_size_bytes: int | None = None,
) -> None:
    """Create ``overlay`` (0600) on ``base``, of ``size_bytes`` (rounded up to 512) or the base's size.

    Pass ``base_virtual_size_bytes`` (``ImageRecord.virtual_size``) with ``size_bytes`` to spare a
    ``qemu-img info``: the creation is then a single ``qemu-img create``.
    """
    argv = _overlay_argv(base, base_format, overlay, size_bytes, qemu_img, base_virtual_size_bytes)
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT_S)
    except subprocess.CalledProcessError as err:
        Path(overlay).unlink(missing_ok=True)
        raise InternalError(f"qemu-img create failed: {err.stderr.strip()}") from err
    except subprocess.TimeoutExpired as err:
        Path(overlay).unlink(missing_ok=True)
        raise DeadlineExceeded(f"qemu-img create did not finish in {QEMU_IMG_TIMEOUT_S} s") from err
    os.chmod(overlay, 0o600)


async def create_overlay_async(
    base: str | os.PathLike[str],
    base_format: ImageFormat,
    overlay: str | os.PathLike[str],
    size_bytes: int | None = None,
    qemu_img: str = "qemu-img",
    *,
    base_virtual_size_bytes: int | None = None,
) -> None:
    """``create_overlay`` without blocking the event loop; cancelling it kills qemu-img and removes the file."""
    if size_bytes is not None and base_virtual_size_bytes is None:
        base_virtual_size_bytes = await asyncio.to_thread(base_virtual_size, base, base_format, qemu_img)
    argv = _overlay_argv(base, base_format, overlay, size_bytes, qemu_img, base_virtual_size_bytes)
    try:
        await run_bounded(argv, QEMU_IMG_TIMEOUT_S)
    except BaseException:
        Path(overlay).unlink(missing_ok=True)
        raise
    os.chmod(overlay, 0o600)


def remove_overlay(overlay: str | os.PathLike[str]) -> None:
    """Delete a container's overlay; an overlay already gone is not an error."""
    Path(overlay).unlink(missing_ok=True)
