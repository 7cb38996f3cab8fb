"""Container calls: validation, lifecycle, status fields, filters, idempotence, resources."""

from __future__ import annotations

import json

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from qmprt.pod.specs import Resources

from .conftest import ODD_LABELS, Client, container_config, create_container, pod_config, run_pod, status_of
from .fake import FakeRuntime


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (cri.ContainerConfig(image=cri.ImageSpec(image="tiny")), "no metadata"),
        (container_config(name=""), "metadata.name is empty"),
        (container_config(image=""), "image.image is empty"),
        (container_config(log_path="/var/log/abs.log"), "must be relative"),
        (container_config(log_path="../escape.log"), "without '..'"),
        (container_config(envs=[cri.KeyValue(key="", value="x")]), "not an environment variable name"),
        (container_config(mounts=[cri.Mount(container_path="etc/app", host_path="/etc")]), "absolute guest path"),
        (
            container_config(mounts=[cri.Mount(container_path="/data", host_path="/etc"),
                                     cri.Mount(container_path="/data", host_path="/tmp")]),
            "two mounts at '/data'",
        ),
        (
            container_config(linux=cri.LinuxContainerConfig(resources=cri.LinuxContainerResources(cpu_quota=-5))),
            "cpu_quota",
        ),
        (
            container_config(
                linux=cri.LinuxContainerConfig(resources=cri.LinuxContainerResources(memory_limit_in_bytes=-(1 << 40)))
            ),
            "memory_limit_in_bytes is negative",
        ),
    ],
    ids=["no-metadata", "no-name", "no-image", "absolute-log", "dotdot-log", "empty-env", "relative-mount",
         "two-mounts-one-path", "quota", "memory"],
)
async def test_malformed_containers_are_invalid_and_leave_nothing(
    client: Client, fake: FakeRuntime, config: cri.ContainerConfig, message: str
) -> None:
    pod_id = await run_pod(client)
    request = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config())
    code, details = await status_of(client.runtime.CreateContainer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details
    assert not fake.containers


async def test_create_without_sandbox_id_or_config_is_invalid(client: Client) -> None:
    no_id = cri.CreateContainerRequest(config=container_config())
    no_config = cri.CreateContainerRequest(pod_sandbox_id="abc")
    for request in (no_id, no_config):
        code, _ = await status_of(client.runtime.CreateContainer(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_create_in_unknown_sandbox_is_not_found(client: Client, fake: FakeRuntime) -> None:
    fake.images.add("tiny")
    request = cri.CreateContainerRequest(pod_sandbox_id="feedbeef", config=container_config())
    code, _ = await status_of(client.runtime.CreateContainer(request))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_a_second_running_container_is_a_failed_precondition(client: Client, fake: FakeRuntime) -> None:
    pod_id = await run_pod(client)
    first = await create_container(client, fake, pod_id)
    request = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=container_config("second"))
    second = (await client.runtime.CreateContainer(request)).container_id
    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=first))
    code, details = await status_of(client.runtime.StartContainer(cri.StartContainerRequest(container_id=second)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already runs" in details
    assert len(fake.containers) == 2


async def test_lifecycle_and_status_fields(client: Client, fake: FakeRuntime) -> None:
    pod_id = await run_pod(client)
    config = container_config(command=["/bin/sh"], args=["-c", "echo hi"], envs=[cri.KeyValue(key="A", value="b=c")])
    container_id = await create_container(client, fake, pod_id, config)
    spec = fake.containers[container_id].spec
    assert (spec.command, spec.args, spec.envs) == (("/bin/sh",), ("-c", "echo hi"), (("A", "b=c"),))

    async def status() -> cri.ContainerStatus:
        request = cri.ContainerStatusRequest(container_id=container_id)
        return (await client.runtime.ContainerStatus(request)).status

    created = await status()
    assert created.state == cri.CONTAINER_CREATED
    assert created.created_at > 10**18 and created.started_at == 0
    assert created.image.image == "tiny"
    assert created.image_ref.startswith("sha256:") and created.image_ref == fake.images.resolve("tiny").digest
    assert created.log_path == "/var/log/pods/default_web_uid-1/vm/0.log"

    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
    running = await status()
    assert running.state == cri.CONTAINER_RUNNING and running.started_at >= running.created_at

    await client.runtime.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=7))
    assert ("stop_container", (container_id, 7)) in fake.calls
    exited = await status()
    assert exited.state == cri.CONTAINER_EXITED
    assert exited.finished_at >= exited.started_at
    assert (exited.exit_code, exited.reason) == (0, "Completed")

    await client.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))
    code, _ = await status_of(client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id)))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_negative_stop_timeout_means_now(client: Client, fake: FakeRuntime) -> None:
    await client.runtime.StopContainer(cri.StopContainerRequest(container_id="whatever", timeout=-3))
    assert ("stop_container", ("whatever", 0)) in fake.calls


async def test_stop_and_remove_are_idempotent(client: Client, fake: FakeRuntime) -> None:
    pod_id = await run_pod(client)
    container_id = await create_container(client, fake, pod_id)
    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
    for _ in range(2):
        await client.runtime.StopContainer(cri.StopContainerRequest(container_id=container_id))
    for _ in range(2):
        await client.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id))
    await client.runtime.StopContainer(cri.StopContainerRequest(container_id=container_id))
    await client.runtime.StopContainer(cri.StopContainerRequest(container_id="never-existed"))
    await client.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id="never-existed"))


async def test_status_of_unknown_container_is_not_found(client: Client) -> None:
    code, _ = await status_of(client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id="abc")))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_start_of_unknown_container_is_not_found(client: Client) -> None:
    code, _ = await status_of(client.runtime.StartContainer(cri.StartContainerRequest(container_id="abc")))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_metadata_labels_annotations_round_trip_byte_for_byte(client: Client, fake: FakeRuntime) -> None:
    pod_id = await run_pod(client)
    config = container_config(name="ctr-ä")
    config.metadata.attempt = 2
    config.labels.clear()
    config.labels.update(ODD_LABELS)
    config.annotations.update(ODD_LABELS)
    container_id = await create_container(client, fake, pod_id, config)
    status = (await client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id))).status
    [listed] = (await client.runtime.ListContainers(cri.ListContainersRequest())).containers
    for got in (status, listed):
        assert got.metadata == config.metadata
        assert dict(got.labels) == ODD_LABELS
        assert dict(got.annotations) == ODD_LABELS
    assert listed.pod_sandbox_id == pod_id and listed.image.image == "tiny" and listed.image_ref


async def test_verbose_status_carries_json_info(client: Client, fake: FakeRuntime) -> None:
    pod_id = await run_pod(client)
    container_id = await create_container(client, fake, pod_id)
    request = cri.ContainerStatusRequest(container_id=container_id, verbose=True)
    info = json.loads((await client.runtime.ContainerStatus(request)).info["info"])
    assert info["sandboxID"] == pod_id and info["status"]["state"] == "created"


async def _ids(client: Client, **filter_fields: object) -> set[str]:
    request = cri.ListContainersRequest(filter=cri.ContainerFilter(**filter_fields))  # type: ignore[arg-type]
    return {item.id for item in (await client.runtime.ListContainers(request)).containers}


async def test_list_filters_are_anded(client: Client, fake: FakeRuntime) -> None:
    pod_a = await run_pod(client, pod_config("a", "ua"))
    pod_b = await run_pod(client, pod_config("b", "ub"))
    first = await create_container(client, fake, pod_a, container_config("one", labels={"tier": "front"}))
    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=first))
    await client.runtime.StopContainer(cri.StopContainerRequest(container_id=first))
    second = await create_container(client, fake, pod_a, container_config("two", labels={"tier": "back"}))
    third = await create_container(client, fake, pod_b, container_config("three", labels={"tier": "front"}))
    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=third))

    exited = cri.ContainerStateValue(state=cri.CONTAINER_EXITED)
    running = cri.ContainerStateValue(state=cri.CONTAINER_RUNNING)
    created = cri.ContainerStateValue(state=cri.CONTAINER_CREATED)
    assert await _ids(client) == {first, second, third}
    assert await _ids(client, id=second) == {second}
    assert await _ids(client, id="ffff" * 16) == set()
    assert await _ids(client, pod_sandbox_id=pod_a) == {first, second}
    assert await _ids(client, state=exited) == {first}
    assert await _ids(client, state=running) == {third}
    assert await _ids(client, state=created) == {second}
    assert await _ids(client, label_selector={"tier": "front"}) == {first, third}
    assert await _ids(client, label_selector={"tier": "front"}, pod_sandbox_id=pod_a) == {first}
    assert await _ids(client, label_selector={"tier": "front"}, pod_sandbox_id=pod_a, state=running) == set()
    assert await _ids(client, label_selector={"tier": "front", "role": "main"}, state=running) == {third}
    assert await _ids(client, id=first, pod_sandbox_id=pod_b) == set()


async def test_update_resources_reaches_the_runtime_whole(client: Client, fake: FakeRuntime) -> None:
    pod_id = await run_pod(client)
    container_id = await create_container(client, fake, pod_id)
    linux = cri.LinuxContainerResources(
        cpu_period=100_000,
        cpu_quota=150_000,
        cpu_shares=512,
        memory_limit_in_bytes=256 << 20,
        cpuset_cpus="0-1",
        cpuset_mems="0",
        hugepage_limits=[cri.HugepageLimit(page_size="2MB", limit=0)],
        unified={"memory.high": "200M"},
    )
    await client.runtime.UpdateContainerResources(
        cri.UpdateContainerResourcesRequest(container_id=container_id, linux=linux)
    )
    [(_, (_, resources))] = [call for call in fake.calls if call[0] == "update_resources"]
    assert resources == Resources(
        cpu_period=100_000,
        cpu_quota=150_000,
        cpu_shares=512,
        memory_limit_in_bytes=256 << 20,
        cpuset_cpus="0-1",
        cpuset_mems="0",
        hugepage_limits=(("2MB", 0),),
        unified=(("memory.high", "200M"),),
    )
    status = (await client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id))).status
    assert status.resources.linux == linux


async def test_update_resources_needs_linux_resources(client: Client) -> None:
    request = cri.UpdateContainerResourcesRequest(container_id="abc")
    code, details = await status_of(client.runtime.UpdateContainerResources(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "linux" in details


async def test_reopen_log_of_unknown_container_is_not_found(client: Client) -> None:
    code, _ = await status_of(client.runtime.ReopenContainerLog(cri.ReopenContainerLogRequest(container_id="abc")))
    assert code == grpc.StatusCode.NOT_FOUND
