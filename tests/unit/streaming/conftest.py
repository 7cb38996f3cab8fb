"""The streaming server on loopback over a fake backend, for the server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from qmprt.config import StreamingConfig
from qmprt.streaming.server import StreamingServer

from .fakes import FakeStreamBackend


@pytest.fixture
async def server() -> AsyncIterator[StreamingServer]:
    streaming = StreamingServer(StreamingConfig(), FakeStreamBackend())
    await streaming.start()
    yield streaming
    await streaming.stop()
