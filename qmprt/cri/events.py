"""RuntimeService GetContainerEvents: the stream of container lifecycle events kubelet's Evented PLEG reads.

One subscription to the pod layer's event bus per call (``qmprt.pod.events``), each event answered
with the pod's sandbox status and container statuses exactly as PodSandboxStatus and ContainerStatus
answer them. The subscription goes with the call: when the client cancels, the stream ends (the
subscriber is removed); when qmprt shuts down, it ends cleanly; a client that falls too far behind
is dropped and its stream ends with RESOURCE_EXHAUSTED, so kubelet relists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt.cri import answers
from qmprt.cri.backend import Handlers
from qmprt.pod.events import ContainerEvent, EventType

EVENT_TYPES = {
    EventType.CREATED: cri.CONTAINER_CREATED_EVENT,
    EventType.STARTED: cri.CONTAINER_STARTED_EVENT,
    EventType.STOPPED: cri.CONTAINER_STOPPED_EVENT,
    EventType.DELETED: cri.CONTAINER_DELETED_EVENT,
}


def container_event(event: ContainerEvent) -> cri.ContainerEventResponse:
    return cri.ContainerEventResponse(
        container_id=event.container_id,
        container_event_type=EVENT_TYPES[event.type],
        created_at=event.created_at_ns,
        pod_sandbox_status=answers.pod_sandbox_status(event.sandbox),
        containers_statuses=[answers.container_status(info) for info in event.containers],
    )


class EventHandlers(Handlers):
    async def GetContainerEvents(
        self, request: cri.GetEventsRequest, context: Any
    ) -> AsyncIterator[cri.ContainerEventResponse]:
        with self.runtime.subscribe() as subscription:
            async for event in subscription:
                yield container_event(event)
