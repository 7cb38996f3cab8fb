"""The pod layer's event bus: order, fan-out, the bound on a slow subscriber, the end at shutdown."""

from __future__ import annotations

import asyncio
import logging

import pytest

from qmprt.errors import ResourceExhausted
from qmprt.pod.events import ContainerEvent, EventBus, EventType, Subscription
from qmprt.pod.records import SandboxStatus
from qmprt.pod.specs import SandboxMetadata, SandboxSpec
from qmprt.pod.states import SandboxState
from qmprt.pod.views import SandboxInfo

POD = SandboxInfo(
    "5a" * 32, SandboxSpec(metadata=SandboxMetadata(name="web", uid="u", namespace="default")),
    SandboxStatus(SandboxState.READY, 1),
)


def event(number: int, kind: EventType = EventType.CREATED) -> ContainerEvent:
    return ContainerEvent(f"{number:064x}", kind, number, POD, ())


async def drain(subscription: Subscription, count: int) -> list[ContainerEvent]:
    return [await asyncio.wait_for(anext(subscription), 1) for _ in range(count)]


async def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = EventBus()
    first, second = bus.subscribe(), bus.subscribe()
    for number in range(50):
        bus.publish(event(number, list(EventType)[number % 4]))
    assert await drain(first, 50) == await drain(second, 50) == [event(n, list(EventType)[n % 4]) for n in range(50)]
    waiting = asyncio.ensure_future(anext(first))
    await asyncio.sleep(0)
    bus.publish(event(99))  # a reader already waiting is woken
    assert await asyncio.wait_for(waiting, 1) == event(99)


async def test_unsubscribed_readers_get_nothing_more() -> None:
    bus = EventBus()
    with bus.subscribe() as subscription:
        assert bus.subscriber_count == 1
    assert bus.subscriber_count == 0
    subscription.close()  # idempotent
    bus.publish(event(1))
    assert subscription.backlog == 0


async def test_a_slow_subscriber_is_dropped_and_told_while_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(limit=3)
    slow, keeping_up = bus.subscribe(), bus.subscribe()
    with caplog.at_level(logging.WARNING, logger="qmprt.pod.events"):
        for number in range(5):
            bus.publish(event(number))
            assert await drain(keeping_up, 1) == [event(number)]
    assert bus.subscriber_count == 1
    assert "dropped a container-event subscriber 3 events behind" in caplog.text
    with pytest.raises(ResourceExhausted, match="fell 3 events behind"):
        await anext(slow)  # at once, not after the stale backlog
    with pytest.raises(ResourceExhausted):
        await anext(slow)


async def test_close_ends_each_stream_after_what_it_holds() -> None:
    bus = EventBus()
    holding, waiting = bus.subscribe(), bus.subscribe()
    bus.publish(event(1))
    assert await drain(waiting, 1) == [event(1)]
    reader = asyncio.ensure_future(anext(waiting))
    await asyncio.sleep(0)
    bus.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, 1)
    assert [found async for found in holding] == [event(1)]
    assert [found async for found in holding] == []
    assert [found async for found in bus.subscribe()] == []  # a late subscriber ends at once
    assert bus.subscriber_count == 0
