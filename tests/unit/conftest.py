"""Fixtures every unit test package shares."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for the socket: pytest's tmp_path can pass the 107-byte unix path limit."""
    path = Path(tempfile.mkdtemp(prefix="qmprt-u-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
