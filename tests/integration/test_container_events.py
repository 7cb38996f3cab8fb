"""GetContainerEvents from a real ``qmprt serve`` booting the tiny guest: the events kubelet's Evented
PLEG reads, for a container stopped by StopContainer, one whose guest powers itself off, and the
sandbox around them; and the stream's end when qmprt shuts down.

Two VMs in all, one after the other in one pod (the machine is small and shared).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt import cgroups

from .conftest import TEST_CGROUP_ROOT
from .guests import TinyGuest
from .serverproc import ServerProcess, served

IMAGE_NAME = "images.qmprt.test/tiny:1"
EVENT_TIMEOUT = 90  # a boot and a power-off under TCG, with room for a loaded machine
CREATED, STARTED, STOPPED, DELETED = (
    cri.CONTAINER_CREATED_EVENT, cri.CONTAINER_STARTED_EVENT, cri.CONTAINER_STOPPED_EVENT, cri.CONTAINER_DELETED_EVENT,
)


@pytest.fixture(scope="module")
def server(
    tiny: TinyGuest, cgroup_driver: cgroups.CgroupDriver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with served(tmp_path_factory.mktemp("events"), tiny, f"{TEST_CGROUP_ROOT}/events", IMAGE_NAME) as server:
        yield server


@pytest.fixture
async def stub(server: ServerProcess) -> AsyncIterator[Any]:
    channel = aio.insecure_channel(server.address)
    yield api_pb2_grpc.RuntimeServiceStub(channel)
    await channel.close()


class Events:
    """One open GetContainerEvents call, read in the background."""

    def __init__(self, stub: Any) -> None:
        self.call = stub.GetContainerEvents(cri.GetEventsRequest())
        self.seen: list[cri.ContainerEventResponse] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for event in self.call:
            self.seen.append(event)

    async def wait_for(self, object_id: str, kind: int, timeout: float = EVENT_TIMEOUT) -> cri.ContainerEventResponse:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.seen:
                if (event.container_id, event.container_event_type) == (object_id, kind):
                    return event
            assert not self.reader.done(), f"the event stream ended: {self.reader}"
            await asyncio.sleep(0.1)
        raise AssertionError(f"no event {kind} for {object_id[:12]} in {timeout} s; seen {self.kinds()}")

    def kinds(self, object_id: str | None = None) -> list[tuple[str, int]]:
        return [
            (e.container_id, e.container_event_type) for e in self.seen if object_id in (None, e.container_id)
        ]

    def statuses(self, event: cri.ContainerEventResponse) -> dict[str, cri.ContainerStatus]:
        return {status.id: status for status in event.containers_statuses}


def container_config(name: str, log_dir: Path, command: list[str] | None = None) -> cri.ContainerConfig:
    (log_dir / name).mkdir(parents=True, exist_ok=True)  # kubelet's part
    return cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=name), image=cri.ImageSpec(image=IMAGE_NAME),
        command=command or [], log_path=f"{name}/0.log",
    )


async def ask_status(stub: Any, container_id: str) -> cri.ContainerStatus:
    return (await stub.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id))).status


async def create(stub: Any, pod_id: str, config: cri.ContainerConfig) -> str:
    return str((await stub.CreateContainer(cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config))).container_id)


async def test_events_of_a_pod_and_its_containers(server: ServerProcess, stub: Any, tmp_path: Path) -> None:
    async with aio.insecure_channel(server.address) as channel:
        images = api_pb2_grpc.ImageServiceStub(channel)
        await images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE_NAME)))
    events, second = Events(stub), Events(stub)
    await asyncio.sleep(0.5)  # both subscribed before anything happens
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    uid = secrets.token_hex(8)
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="evented", uid=uid, namespace="default"),
        hostname="evented", log_directory=str(log_dir),
    )
    pod_id = (await stub.RunPodSandbox(cri.RunPodSandboxRequest(config=config))).pod_sandbox_id
    ready = await events.wait_for(pod_id, STARTED, 10)
    assert ready.pod_sandbox_status.state == cri.SANDBOX_READY and ready.pod_sandbox_status.metadata.uid == uid

    # Stopped by StopContainer.
    main_id = await create(stub, pod_id, container_config("main", log_dir))
    assert events.statuses(await events.wait_for(main_id, CREATED, 10))[main_id].state == cri.CONTAINER_CREATED
    await stub.StartContainer(cri.StartContainerRequest(container_id=main_id))
    started = events.statuses(await events.wait_for(main_id, STARTED, 10))[main_id]
    assert started.state == cri.CONTAINER_RUNNING and started.started_at > 0
    await stub.StopContainer(cri.StopContainerRequest(container_id=main_id, timeout=0))
    stopped = await events.wait_for(main_id, STOPPED, 30)
    assert events.statuses(stopped)[main_id] == await ask_status(stub, main_id)  # as ContainerStatus answers it
    assert events.statuses(stopped)[main_id].state == cri.CONTAINER_EXITED
    await stub.RemoveContainer(cri.RemoveContainerRequest(container_id=main_id))
    deleted = await events.wait_for(main_id, DELETED, 30)
    assert main_id not in events.statuses(deleted) and deleted.pod_sandbox_status.id == pod_id

    # A job: its guest powers itself off, and that is STOPPED without anyone asking.
    job_id = await create(stub, pod_id, container_config("job", log_dir, ["/bin/sh", "-c", "echo job-done; poweroff"]))
    await stub.StartContainer(cri.StartContainerRequest(container_id=job_id))
    ended = events.statuses(await events.wait_for(job_id, STOPPED))[job_id]
    assert (ended.state, ended.exit_code, ended.reason) == (cri.CONTAINER_EXITED, 0, "Completed")
    assert ended.finished_at >= ended.started_at > 0

    await stub.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert (await events.wait_for(pod_id, STOPPED, 30)).pod_sandbox_status.state == cri.SANDBOX_NOTREADY
    await stub.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    gone = await events.wait_for(pod_id, DELETED, 30)
    assert list(gone.containers_statuses) == [] and gone.pod_sandbox_status.id == pod_id

    assert events.kinds(main_id) == [(main_id, k) for k in (CREATED, STARTED, STOPPED, DELETED)]
    assert events.kinds(job_id) == [(job_id, k) for k in (CREATED, STARTED, STOPPED, DELETED)]
    assert events.kinds(pod_id) == [(pod_id, k) for k in (CREATED, STARTED, STOPPED, DELETED)]
    assert events.kinds() == second.kinds()
    stamps = [event.created_at for event in events.seen]
    assert stamps == sorted(stamps)
    for reader in (events, second):
        reader.call.cancel()


async def test_a_shutdown_ends_the_streams_and_holds_nothing(server: ServerProcess, stub: Any) -> None:
    events = Events(stub)
    await asyncio.sleep(0.5)
    began = time.monotonic()
    assert await asyncio.to_thread(server.stop) == 0
    assert time.monotonic() - began < 4, "the open event stream held the shutdown for its grace"
    await asyncio.wait_for(events.reader, 10)  # ended, not broken
    assert await events.call.code() == grpc.StatusCode.OK
    server.start()
