"""Container and pod sandbox stats: fields, nanosecond timestamps, filters."""

from __future__ import annotations

import grpc
from cri_api.v1 import api_pb2 as cri

from .conftest import Client, container_config, create_container, pod_config, run_pod, status_of
from .fake import FakeRuntime


async def test_container_stats_fields(client: Client, fake: FakeRuntime) -> None:
    pod_id = await run_pod(client)
    container_id = await create_container(client, fake, pod_id)
    stats = (await client.runtime.ContainerStats(cri.ContainerStatsRequest(container_id=container_id))).stats
    assert stats.attributes.id == container_id
    assert stats.attributes.metadata.name == "vm"
    assert dict(stats.attributes.labels) == {"role": "main"}
    assert stats.cpu.timestamp > 10**18
    assert stats.cpu.usage_core_nano_seconds.value == 123_000_000
    assert stats.memory.working_set_bytes.value == 64 << 20
    assert stats.memory.usage_bytes.value == 80 << 20
    assert not stats.memory.HasField("rss_bytes"), "unknown figures stay unset, not 0"
    layer = stats.writable_layer
    assert layer.fs_id.mountpoint and layer.used_bytes.value == 4096 and layer.inodes_used.value == 1
    assert layer.timestamp > 10**18


async def test_sandbox_stats_include_their_containers(client: Client, fake: FakeRuntime) -> None:
    pod_id = await run_pod(client)
    container_id = await create_container(client, fake, pod_id)
    stats = (await client.runtime.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id=pod_id))).stats
    assert stats.attributes.id == pod_id and stats.attributes.metadata.name == "web"
    assert stats.linux.cpu.usage_core_nano_seconds.value == 123_000_000
    assert [c.attributes.id for c in stats.linux.containers] == [container_id]


async def test_stats_of_unknown_objects_are_not_found(client: Client) -> None:
    for call in (
        client.runtime.ContainerStats(cri.ContainerStatsRequest(container_id="nope")),
        client.runtime.PodSandboxStats(cri.PodSandboxStatsRequest(pod_sandbox_id="nope")),
    ):
        code, _ = await status_of(call)
        assert code == grpc.StatusCode.NOT_FOUND


async def test_stats_lists_filter(client: Client, fake: FakeRuntime) -> None:
    pod_a = await run_pod(client, pod_config("a", "ua", labels={"team": "x"}))
    pod_b = await run_pod(client, pod_config("b", "ub"))
    in_a = await create_container(client, fake, pod_a, container_config("one", labels={"k": "1"}))
    in_b = await create_container(client, fake, pod_b, container_config("two", labels={"k": "2"}))

    async def containers(**fields: object) -> set[str]:
        request = cri.ListContainerStatsRequest(filter=cri.ContainerStatsFilter(**fields))  # type: ignore[arg-type]
        return {s.attributes.id for s in (await client.runtime.ListContainerStats(request)).stats}

    async def sandboxes(**fields: object) -> set[str]:
        request = cri.ListPodSandboxStatsRequest(filter=cri.PodSandboxStatsFilter(**fields))  # type: ignore[arg-type]
        return {s.attributes.id for s in (await client.runtime.ListPodSandboxStats(request)).stats}

    assert await containers() == {in_a, in_b}
    assert await containers(pod_sandbox_id=pod_b) == {in_b}
    assert await containers(label_selector={"k": "1"}) == {in_a}
    assert await containers(label_selector={"k": "1"}, pod_sandbox_id=pod_b) == set()
    assert await containers(id="0" * 64) == set()
    assert await sandboxes() == {pod_a, pod_b}
    assert await sandboxes(label_selector={"team": "x"}) == {pod_a}
    assert await sandboxes(id=pod_b) == {pod_b}
