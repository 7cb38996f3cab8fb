"""Per-container qcow2 overlays on a read-only base image.

The base image's format is always named (``-F``): QEMU is never left to probe a format.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Literal

from qmprt.errors import InternalError, InvalidArgument

ImageFormat = Literal["qcow2", "raw"]


def create_overlay(
    base: str | os.PathLike[str],
    base_format: ImageFormat,
    overlay: str | os.PathLike[str],
    size_bytes: int | None = None,
    qemu_img: str = "qemu-img",
) -> None:
    base_path = Path(base).resolve()
    if not base_path.is_file():
        raise InvalidArgument(f"base image {base_path} does not exist")
    argv = [qemu_img, "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base_path), str(overlay)]
    if size_bytes is not None:
        argv.append(str(size_bytes))
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
    except subprocess.CalledProcessError as err:
        Path(overlay).unlink(missing_ok=True)
        raise InternalError(f"qemu-img create failed: {err.stderr.strip()}") from err
    os.chmod(overlay, 0o600)
