"""Kernel and initramfs an operator attaches to a stored image, for direct kernel boot.

qmprt never extracts a kernel from a pulled (untrusted) disk image; an operator who trusts an image's
kernel attaches it with ``qmprt ctl image import … --kernel K [--initrd I] --cmdline C``. The files
live in ``<store>/boot/<hex>/`` (read-only) beside ``boot.json`` with the command line, and go when the
image goes. Pods opt in with the ``qmprt.io/boot`` annotation (``direct`` on q35, or ``microvm``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qmprt.errors import InvalidArgument, NotFound
from qmprt.state import read_json, write_json_atomic

MAX_KERNEL_BYTES = 256 << 20
MAX_CMDLINE = 2048


@dataclass(frozen=True)
class BootFiles:
    kernel: str
    initrd: str | None
    cmdline: str


def boot_dir(root: Path, hexdigest: str) -> Path:
    return root / "boot" / hexdigest


def load_boot_files(root: Path, hexdigest: str) -> BootFiles | None:
    directory = boot_dir(root, hexdigest)
    try:
        document = read_json(directory / "boot.json")
    except NotFound:
        return None
    initrd = directory / "initrd.img"
    return BootFiles(str(directory / "vmlinuz"), str(initrd) if initrd.exists() else None, str(document["cmdline"]))


def _check_file(path: str | os.PathLike[str], what: str) -> None:
    try:
        info = os.stat(path)
    except OSError as err:
        raise InvalidArgument(f"{what} {path}: {err.strerror}") from err
    if not os.path.isfile(path) or info.st_size == 0 or info.st_size > MAX_KERNEL_BYTES:
        raise InvalidArgument(f"{what} {path} must be a regular file of 1 byte to {MAX_KERNEL_BYTES >> 20} MiB")


def write_boot_files(
    root: Path, hexdigest: str, kernel: str | os.PathLike[str], initrd: str | os.PathLike[str] | None, cmdline: str
) -> BootFiles:
    """Copy the files in (replacing earlier ones) through a temp directory renamed into place."""
    _check_file(kernel, "kernel")
    if initrd is not None:
        _check_file(initrd, "initrd")
    if len(cmdline) > MAX_CMDLINE or not cmdline.isprintable():
        raise InvalidArgument(f"the kernel command line must be printable and at most {MAX_CMDLINE} characters")
    parent = root / "boot"
    parent.mkdir(mode=0o700, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    try:
        shutil.copyfile(kernel, temp / "vmlinuz")
        os.chmod(temp / "vmlinuz", 0o444)
        if initrd is not None:
            shutil.copyfile(initrd, temp / "initrd.img")
            os.chmod(temp / "initrd.img", 0o444)
        write_json_atomic(temp / "boot.json", {"version": 1, "cmdline": cmdline})
        remove_boot_files(root, hexdigest)
        os.rename(temp, boot_dir(root, hexdigest))
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    found = load_boot_files(root, hexdigest)
    assert found is not None
    return found


def remove_boot_files(root: Path, hexdigest: str) -> None:
    shutil.rmtree(boot_dir(root, hexdigest), ignore_errors=True)
