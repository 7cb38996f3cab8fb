"""Kernels an operator attaches to stored images (for direct boot): store and ``ctl image import``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qmprt import config as config_module
from qmprt.errors import InvalidArgument, NotFound
from qmprt.image import ImageConfig, ImageStore


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


def test_boot_files_follow_the_image(tmp_path, disk) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"\x7fkernel")
    initrd.write_bytes(b"initrd")
    store = ImageStore(tmp_path / "store", ImageConfig())
    record = store.import_file(disk, "example.org/vm:1")
    assert record.boot is None
    with pytest.raises(NotFound):
        store.set_boot_files("example.org/other:1", kernel, None, "console=ttyS0")
    with pytest.raises(InvalidArgument, match="command line"):
        store.set_boot_files(record.digest, kernel, None, "console=ttyS0\nroot=/dev/vda")
    with pytest.raises(InvalidArgument, match="kernel"):
        store.set_boot_files(record.digest, tmp_path / "absent", None, "")
    booted = store.set_boot_files("example.org/vm:1", kernel, initrd, "console=ttyS0 root=/dev/vda1")
    assert booted.boot is not None and booted.boot.cmdline == "console=ttyS0 root=/dev/vda1"
    assert Path(booted.boot.kernel).read_bytes() == b"\x7fkernel"
    # Another process (a second store on the same root) sees them; removal takes them along.
    other = ImageStore(tmp_path / "store", ImageConfig())
    assert other.resolve("example.org/vm:1").boot == booted.boot  # type: ignore[union-attr]
    store.remove("example.org/vm:1", lambda digest: False)
    assert not Path(booted.boot.kernel).exists()


def test_ctl_image_import_with_a_kernel(tmp_path, disk) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\x7fkernel")
    qmprt = str(Path(sys.executable).with_name("qmprt"))
    state = tmp_path / "state"
    done = subprocess.run(
        [qmprt, "ctl", "image", "import", str(disk), "--name", "example.org/fast:1", "--state-dir", str(state),
         "--kernel", str(kernel), "--cmdline", "console=ttyS0"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "with a kernel for direct boot" in done.stdout
    refused = subprocess.run(
        [qmprt, "ctl", "image", "import", str(disk), "--name", "example.org/x:1", "--state-dir", str(state),
         "--cmdline", "console=ttyS0"],
        capture_output=True, text=True,
    )
    assert refused.returncode == 1 and "go with --kernel" in refused.stderr
    cfg = config_module.load(state_dir=str(state))
    from qmprt.image import open_store

    assert open_store(cfg).resolve("example.org/fast:1").boot is not None  # type: ignore[union-attr]
