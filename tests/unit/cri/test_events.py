"""GetContainerEvents over real gRPC on a unix socket, over the fake runtime's real event bus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt.cri.server import CRIServer, SocketClaim
from qmprt.pod.events import EventBus, EventType

from .conftest import Client, container_config, create_container, pod_config, run_pod
from .fake import FakeRuntime

CREATED, STARTED, STOPPED, DELETED = (
    cri.CONTAINER_CREATED_EVENT, cri.CONTAINER_STARTED_EVENT, cri.CONTAINER_STOPPED_EVENT, cri.CONTAINER_DELETED_EVENT,
)


async def subscribed(client: Client, fake: FakeRuntime, count: int = 1) -> list[Any]:
    """``count`` open GetContainerEvents calls, returned once the server has subscribed each."""
    calls = []
    for number in range(1, count + 1):
        calls.append(client.runtime.GetContainerEvents(cri.GetEventsRequest()))
        await wait_until(lambda: fake.events.subscriber_count == number)
    return calls


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.01)


async def take(call: Any, count: int) -> list[cri.ContainerEventResponse]:
    return [await asyncio.wait_for(call.read(), 5) for _ in range(count)]


def kinds(events: list[cri.ContainerEventResponse]) -> list[tuple[str, int]]:
    return [(event.container_id, event.container_event_type) for event in events]


async def test_a_container_life_as_events_with_the_pod_statuses(client: Client, fake: FakeRuntime) -> None:
    [call] = await subscribed(client, fake)
    pod_id = await run_pod(client)
    container_id = await create_container(client, fake, pod_id)
    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
    running = (await client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id))).status
    await client.runtime.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=0))
    exited = (await client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id))).status
    await client.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))
    await client.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await client.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    events = await take(call, 8)
    # The sandbox's own events carry its id as the container id, as containerd sends them.
    assert kinds(events) == [
        (pod_id, CREATED), (pod_id, STARTED),
        (container_id, CREATED), (container_id, STARTED), (container_id, STOPPED), (container_id, DELETED),
        (pod_id, STOPPED), (pod_id, DELETED),
    ]
    assert all(event.pod_sandbox_status.id == pod_id for event in events)
    assert all(event.pod_sandbox_status.metadata.uid == "uid-1" for event in events)  # kubelet keys pods by it
    assert [e.pod_sandbox_status.state for e in events[-2:]] == [cri.SANDBOX_NOTREADY, cri.SANDBOX_NOTREADY]
    assert events[0].pod_sandbox_status.network.ip == "10.88.0.7"
    states = [[status.state for status in event.containers_statuses] for event in events]
    assert states == [[], [], [cri.CONTAINER_CREATED], [cri.CONTAINER_RUNNING], [cri.CONTAINER_EXITED], [], [], []]
    # The statuses are those ContainerStatus answers.
    assert events[3].containers_statuses[0] == running and events[4].containers_statuses[0] == exited
    assert events[4].containers_statuses[0].reason == "Completed"
    stamps = [event.created_at for event in events]
    assert stamps == sorted(stamps) and abs(stamps[0] - time.time_ns()) < 60 * 10**9
    call.cancel()


async def test_every_subscriber_sees_every_event_in_order(client: Client, fake: FakeRuntime) -> None:
    calls = await subscribed(client, fake, 2)

    async def one_pod(number: int) -> None:
        pod_id = await run_pod(client, pod_config(name=f"web-{number}", uid=f"uid-{number}"))
        container_id = await create_container(client, fake, pod_id, container_config(name=f"c{number}"))
        await client.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
        await client.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    await asyncio.gather(*(one_pod(number) for number in range(8)))
    first, second = [await take(call, 8 * 8) for call in calls]  # per pod: 2 + 4 + 2 events
    assert kinds(first) == kinds(second)
    assert [event.created_at for event in first] == [event.created_at for event in second]
    for pod_id in {event.pod_sandbox_status.id for event in first}:
        mine = [kind for object_id, kind in kinds(first) if object_id == pod_id]
        assert mine == [CREATED, STARTED, STOPPED, DELETED]
    for call in calls:
        call.cancel()


async def test_a_cancelled_stream_leaves_no_subscriber(client: Client, fake: FakeRuntime) -> None:
    first, second = await subscribed(client, fake, 2)
    await run_pod(client)
    await take(first, 1)
    first.cancel()
    await wait_until(lambda: fake.events.subscriber_count == 1)
    assert [event.container_event_type for event in await take(second, 2)] == [CREATED, STARTED]
    second.cancel()  # one that was never read from goes too
    await wait_until(lambda: fake.events.subscriber_count == 0)
    await run_pod(client, pod_config(name="after", uid="uid-after"))  # publishing to nobody is fine


async def test_a_subscriber_that_falls_behind_is_dropped_and_told(client: Client, fake: FakeRuntime) -> None:
    fake.events = EventBus(limit=4)
    [call] = await subscribed(client, fake)
    pod_id = await run_pod(client)
    # Published in one go, faster than any reader: the fifth queued event is one too many.
    for _ in range(10):
        fake._publish(EventType.CREATED, pod_id, pod_id)
    with pytest.raises(aio.AioRpcError) as failure:
        for _ in range(20):
            await asyncio.wait_for(call.read(), 5)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fell 4 events behind" in (failure.value.details() or "")
    assert fake.events.subscriber_count == 0
    [again] = await subscribed(client, fake)  # subscribing again works
    again.cancel()


@pytest.fixture
async def own_server(fake: FakeRuntime) -> AsyncIterator[CRIServer]:
    server = CRIServer(fake, SocketClaim(fake.config.runtime.socket))
    await server.start()
    yield server


async def test_shutdown_ends_the_streams_at_once(own_server: CRIServer, fake: FakeRuntime) -> None:
    channel = aio.insecure_channel(own_server.address)
    client = Client(api_pb2_grpc.RuntimeServiceStub(channel), None, channel, own_server.address)
    [call] = await subscribed(client, fake)
    await run_pod(client)
    began = time.monotonic()
    await own_server.stop(grace=30)
    assert time.monotonic() - began < 5, "an open event stream held the shutdown"
    # The events published before the end still arrive, then the stream ends cleanly.
    assert [event.container_event_type for event in await take(call, 2)] == [CREATED, STARTED]
    assert await asyncio.wait_for(call.read(), 5) == aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    await channel.close()
