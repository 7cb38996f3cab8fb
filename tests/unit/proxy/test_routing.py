"""Routing through the proxy: handlers, ids, lists, images; over two real CRI servers."""

from __future__ import annotations

import json

import grpc
from cri_api.v1 import api_pb2 as cri

from qmprt.proxy.server import SERVICES
from qmprt.proxy.service import ProxyService

from ..cri.conftest import container_config, pod_config, status_of
from .conftest import Proxied


async def run(proxied: Proxied, handler: str, name: str = "web", uid: str = "uid-1") -> str:
    assert proxied.client is not None
    answer = await proxied.client.runtime.RunPodSandbox(
        cri.RunPodSandboxRequest(config=pod_config(name=name, uid=uid), runtime_handler=handler)
    )
    return str(answer.pod_sandbox_id)


async def create(proxied: Proxied, pod_id: str, image: str) -> str:
    assert proxied.client is not None
    for side in (proxied.vm, proxied.ctr):
        side.fake.images.add(image)
    answer = await proxied.client.runtime.CreateContainer(
        cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=container_config(image=image), sandbox_config=pod_config())
    )
    return str(answer.container_id)


async def test_pods_go_by_handler_and_later_calls_by_owner(proxied: Proxied) -> None:
    client = proxied.client
    assert client is not None
    vm_pod = await run(proxied, "qmprt", "vm-pod", "uid-vm")
    ctr_pod = await run(proxied, "", "ctr-pod", "uid-ctr")
    runc_pod = await run(proxied, "runc", "runc-pod", "uid-runc")
    assert set(proxied.vm.fake.sandboxes) == {vm_pod}
    assert set(proxied.ctr.fake.sandboxes) == {ctr_pod, runc_pod}
    vm_ctr = await create(proxied, vm_pod, "disk.qcow2")
    ctr_ctr = await create(proxied, ctr_pod, "busybox")
    assert set(proxied.vm.fake.containers) == {vm_ctr} and set(proxied.ctr.fake.containers) == {ctr_ctr}
    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=vm_ctr))
    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=ctr_ctr[:12]))  # crictl's short ids
    status = await client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=vm_ctr))
    assert status.status.state == cri.CONTAINER_RUNNING
    sandbox = await client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=ctr_pod))
    assert sandbox.status.metadata.name == "ctr-pod"
    proxied.ctr.fake.exec_results[("hostname",)] = proxied.vm.fake.exec_results.get(("hostname",))  # type: ignore[assignment]
    await client.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=vm_pod))
    await client.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=vm_ctr))
    await client.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=vm_pod))
    assert not proxied.vm.fake.sandboxes and ctr_pod in proxied.ctr.fake.sandboxes
    assert proxied.server is not None
    assert proxied.server.owners.owner("sandboxes", vm_pod) is None
    assert proxied.server.owners.owner("sandboxes", ctr_pod) == "ctr"


async def test_an_unknown_handler_names_those_served(proxied: Proxied) -> None:
    assert proxied.client is not None
    code, message = await status_of(proxied.client.runtime.RunPodSandbox(
        cri.RunPodSandboxRequest(config=pod_config(), runtime_handler="kata")
    ))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'kata'" in message and "qmprt → vm" in message and "runc → ctr" in message
    assert not proxied.vm.fake.sandboxes and not proxied.ctr.fake.sandboxes


async def test_ids_no_runtime_owns(proxied: Proxied) -> None:
    client = proxied.client
    assert client is not None
    missing = "f" * 64
    code, message = await status_of(client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=missing)))
    assert code == grpc.StatusCode.NOT_FOUND and "no runtime behind this proxy" in message
    code, _ = await status_of(client.runtime.ExecSync(cri.ExecSyncRequest(container_id=missing, cmd=["true"])))
    assert code == grpc.StatusCode.NOT_FOUND
    # The CRI makes stops and removals idempotent.
    assert (await status_of(client.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=missing))))[0] == grpc.StatusCode.OK
    assert (await status_of(client.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=missing))))[0] == grpc.StatusCode.OK
    assert (await status_of(client.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=missing))))[0] == grpc.StatusCode.OK
    assert (await status_of(client.runtime.StopContainer(cri.StopContainerRequest(container_id=missing))))[0] == grpc.StatusCode.OK
    for hostile in ("", "../../etc/passwd", "a" * 500, "id with space", "\x00"):
        code, message = await status_of(client.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=hostile)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (hostile, message)
        assert len(message) < 300


async def test_an_id_made_behind_the_proxys_back_is_found(proxied: Proxied) -> None:
    """A pod made directly on a downstream (or while the proxy was down) is looked up in the lists."""
    assert proxied.client is not None
    from ..cri.conftest import Client, run_pod
    from grpc import aio
    from cri_api.v1 import api_pb2_grpc

    assert proxied.vm.server is not None
    channel = aio.insecure_channel(proxied.vm.server.address)
    direct = Client(api_pb2_grpc.RuntimeServiceStub(channel), api_pb2_grpc.ImageServiceStub(channel), channel, "")
    pod_id = await run_pod(direct, pod_config(name="direct", uid="uid-d"), handler="qmprt")
    await channel.close()
    answer = await proxied.client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert answer.status.metadata.name == "direct"


async def test_lists_merge_and_filters_still_work(proxied: Proxied) -> None:
    client = proxied.client
    assert client is not None
    vm_pod = await run(proxied, "qmprt", "vm-pod", "uid-vm")
    ctr_pod = await run(proxied, "", "ctr-pod", "uid-ctr")
    vm_ctr = await create(proxied, vm_pod, "disk.qcow2")
    ctr_ctr = await create(proxied, ctr_pod, "busybox")
    listed = await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest())
    assert {item.id for item in listed.items} == {vm_pod, ctr_pod}
    by_id = await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(id=vm_pod)))
    assert [item.id for item in by_id.items] == [vm_pod]
    containers = await client.runtime.ListContainers(cri.ListContainersRequest())
    assert {item.id for item in containers.containers} == {vm_ctr, ctr_ctr}
    of_pod = await client.runtime.ListContainers(
        cri.ListContainersRequest(filter=cri.ContainerFilter(pod_sandbox_id=ctr_pod))
    )
    assert [item.id for item in of_pod.containers] == [ctr_ctr]
    labelled = await client.runtime.ListContainers(
        cri.ListContainersRequest(filter=cri.ContainerFilter(label_selector={"role": "none"}))
    )
    assert not labelled.containers
    stats = await client.runtime.ListContainerStats(cri.ListContainerStatsRequest())
    assert {stat.attributes.id for stat in stats.stats} == {vm_ctr, ctr_ctr}
    sandbox_stats = await client.runtime.ListPodSandboxStats(cri.ListPodSandboxStatsRequest())
    assert {stat.attributes.id for stat in sandbox_stats.stats} == {vm_pod, ctr_pod}
    descriptors = await client.runtime.ListMetricDescriptors(cri.ListMetricDescriptorsRequest())
    names = [descriptor.name for descriptor in descriptors.descriptors]
    assert names and len(names) == len(set(names))


async def test_images_go_by_handler_then_pattern_then_default(proxied: Proxied) -> None:
    client = proxied.client
    assert client is not None
    await client.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image="appliance.qcow2")))
    await client.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image="busybox:1")))
    await client.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image="vendor/vm:2", runtime_handler="qmprt")))
    vm_pod = await run(proxied, "qmprt", "vm-pod", "uid-vm")
    await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest())
    # An old kubelet names no handler; the sandbox config says which pod, and that pod is the VM runtime's.
    await client.images.PullImage(cri.PullImageRequest(
        image=cri.ImageSpec(image="by-pod:1"), sandbox_config=pod_config(name="vm-pod", uid="uid-vm")
    ))
    vm_images = {name for record in proxied.vm.fake.images.list() for name in record.names}
    ctr_images = {name for record in proxied.ctr.fake.images.list() for name in record.names}
    assert vm_images == {"appliance.qcow2", "vendor/vm:2", "by-pod:1"} and ctr_images == {"busybox:1"}
    listed = await client.images.ListImages(cri.ListImagesRequest())
    assert {tag for image in listed.images for tag in image.repo_tags} >= vm_images | ctr_images
    status = await client.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image="appliance.qcow2")))
    assert status.image.id
    fs = await client.images.ImageFsInfo(cri.ImageFsInfoRequest())
    assert len(fs.image_filesystems) == 2
    code, _ = await status_of(client.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image="x", runtime_handler="nope"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert vm_pod


async def test_downstream_errors_pass_through_unchanged(proxied: Proxied) -> None:
    assert proxied.client is not None
    code, message = await status_of(proxied.client.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image="missing.qcow2"))))
    assert code == grpc.StatusCode.NOT_FOUND and "the server answered 404" in message


async def test_version_and_status_name_the_downstreams(proxied: Proxied) -> None:
    client = proxied.client
    assert client is not None
    version = await client.runtime.Version(cri.VersionRequest())
    assert version.runtime_name == "qmprt-proxy" and "vm=qmprt" in version.runtime_version and "ctr=qmprt" in version.runtime_version
    status = await client.runtime.Status(cri.StatusRequest(verbose=True))
    types = [condition.type for condition in status.status.conditions]
    assert types[:2] == ["RuntimeReady", "NetworkReady"]
    assert {"vm:RuntimeReady", "ctr:RuntimeReady", "vm:NetworkReady", "ctr:NetworkReady"} <= set(types)
    report = json.loads(status.info["downstreams"])
    assert report["vm"]["reachable"] and report["ctr"]["reachable"]


def test_every_cri_method_has_a_route() -> None:
    from cri_api.v1 import api_pb2

    service = ProxyService(router=None)  # type: ignore[arg-type]
    for name in SERVICES:
        for method in api_pb2.DESCRIPTOR.services_by_name[name].methods:
            assert callable(service.handler(method.name)), method.name


async def test_image_calls_without_a_handler_go_where_the_image_is(proxied: Proxied) -> None:
    """kubelet's ImageStatus and RemoveImage name no handler: a VM image pulled for a VM pod is then
    found in the VM runtime, not asked of the default."""
    client = proxied.client
    assert client is not None
    await run(proxied, "qmprt", "vm-pod", "uid-vm")
    await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest())
    await client.images.PullImage(cri.PullImageRequest(
        image=cri.ImageSpec(image="vendor/appliance:3"), sandbox_config=pod_config(name="vm-pod", uid="uid-vm")
    ))
    status = await client.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image="vendor/appliance:3")))
    assert "vendor/appliance:3" in status.image.repo_tags
    proxied.ctr.fake.images.add("only-in-ctr:1")
    await client.images.ListImages(cri.ListImagesRequest())
    status = await client.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image="only-in-ctr:1")))
    assert "only-in-ctr:1" in status.image.repo_tags
    await client.images.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image="vendor/appliance:3")))
    assert not any("vendor/appliance:3" in record.names for record in proxied.vm.fake.images.list())
