"""``cancel_and_wait``: the engine's way to end a helper task without swallowing its own cancellation."""

from __future__ import annotations

import asyncio

import pytest

from qmprt.vm.monitor import cancel_and_wait


async def test_the_task_is_cancelled_and_awaited() -> None:
    task = asyncio.ensure_future(asyncio.sleep(60))
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_an_error_the_task_ends_with_is_not_raised() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.ensure_future(fails_when_cancelled())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert isinstance(task.exception(), RuntimeError)


async def test_the_callers_own_cancellation_propagates() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await release.wait()  # takes its time to clean up
            raise

    helper = asyncio.ensure_future(slow_to_stop())
    await asyncio.sleep(0)
    caller = asyncio.ensure_future(cancel_and_wait(helper))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled()
    release.set()
    await asyncio.wait([helper])
    assert helper.cancelled()
