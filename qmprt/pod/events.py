"""Lifecycle events of containers and sandboxes, for the CRI's GetContainerEvents (kubelet's Evented PLEG).

An event is published at the moment the state it announces is persisted (the status file replaced,
or the object's files removed), from the event loop's thread and without awaiting: so every
subscriber sees the events in the order they happened, and none is lost while pods start and stop
at the same time. Each event carries its pod as it is at that moment: the sandbox's view and the
views of every container in it (for DELETED, without the deleted one), because kubelet builds the
pod's status from the event alone.

Sandboxes have events too, with the sandbox's id as the container id, as containerd sends them:
CREATED then STARTED when RunPodSandbox has made it, STOPPED when it becomes NOTREADY, DELETED when it
is removed. A container has STOPPED whenever it becomes exited: StopContainer, a VM that ends by
itself (its guest powered off, QEMU crashed), a start that failed, or recovery finding it exited.

Each subscriber has its own queue, bounded by ``limit`` events: one that falls that far behind is
dropped (with a log line) and its stream ends with ``ResourceExhausted`` (kubelet then relists),
rather than qmprt buffering without bound for a reader that stopped reading.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from types import TracebackType

from qmprt.errors import ResourceExhausted
from qmprt.pod.views import ContainerInfo, SandboxInfo

log = logging.getLogger(__name__)

SUBSCRIBER_LIMIT = 1024


class EventType(str, enum.Enum):
    CREATED = "created"
    STARTED = "started"
    STOPPED = "stopped"
    DELETED = "deleted"


@dataclass(frozen=True)
class ContainerEvent:
    container_id: str  # a container's id, or the sandbox's for the sandbox's own events
    type: EventType
    created_at_ns: int
    sandbox: SandboxInfo
    containers: tuple[ContainerInfo, ...]  # every container of the sandbox, as it is now


class Subscription:
    """One reader of the bus: iterate it (``async for``); ``close`` (or leaving ``with``) unsubscribes.

    The iteration ends when the bus closes (after the events queued before), and raises
    ``ResourceExhausted`` at once when the subscriber fell too far behind and was dropped."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[ContainerEvent | None] = asyncio.Queue()  # None: the end
        self._failure: ResourceExhausted | None = None
        self._ended = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ContainerEvent:
        if self._failure is not None:
            raise self._failure
        if self._ended:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self._ended = True
            if self._failure is not None:
                raise self._failure
            raise StopAsyncIteration
        return event

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _deliver(self, event: ContainerEvent) -> None:
        self._queue.put_nowait(event)

    def _end(self, failure: ResourceExhausted | None = None) -> None:
        self._failure = failure
        self._queue.put_nowait(None)  # wakes a reader waiting on an empty queue


class EventBus:
    """Delivers every published event to every subscriber, in publishing order."""

    def __init__(self, limit: int = SUBSCRIBER_LIMIT) -> None:
        self.limit = limit
        self._subscribers: list[Subscription] = []
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        subscription = Subscription(self)
        if self._closed:
            subscription._end()
        else:
            self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Idempotent: a dropped or already removed subscriber is no error."""
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def publish(self, event: ContainerEvent) -> None:
        for subscription in list(self._subscribers):
            if subscription.backlog >= self.limit:
                self._subscribers.remove(subscription)
                log.warning(
                    "dropped a container-event subscriber %d events behind (at %s %s); its stream ends and "
                    "kubelet relists", subscription.backlog, event.type.value, event.container_id[:12],
                )
                subscription._end(ResourceExhausted(
                    f"this event stream fell {self.limit} events behind and was dropped; subscribe again and relist"
                ))
            else:
                subscription._deliver(event)

    def close(self) -> None:
        """End every subscription (after the events it holds) and refuse new ones: qmprt stops."""
        self._closed = True
        subscribers, self._subscribers = self._subscribers, []
        for subscription in subscribers:
            subscription._end()
