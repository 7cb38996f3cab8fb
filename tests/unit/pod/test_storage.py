"""File mounts are read as regular files with a bound, whatever the path holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qmprt.errors import InvalidArgument
from qmprt.pod.storage import read_regular_file


def test_a_regular_file_is_read_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"s3cr3t")
    path.chmod(0o400)
    assert read_regular_file(str(path), 64) == (b"s3cr3t", 0o400)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: os.mkfifo(d / "fifo") or d / "fifo", "not a regular file"),
        (lambda d: Path("/dev/zero"), "not a regular file"),
        (lambda d: Path("/proc/self/environ"), "more than"),  # st_size 0, yet it has content
        (lambda d: (d / "big").write_bytes(b"x" * 65) and d / "big", "more than 64 bytes"),
        (lambda d: d / "missing", "cannot be read"),
    ],
    ids=["fifo", "device", "proc-file", "too-big", "missing"],
)
def test_anything_else_is_refused_at_once(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        read_regular_file(str(make(tmp_path)), 64)
