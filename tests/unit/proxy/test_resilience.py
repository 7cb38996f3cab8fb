"""The proxy and its downstreams coming and going: restarts lose nothing, a dead runtime is named."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from ..cri.conftest import status_of
from .conftest import Proxied
from .test_routing import create, run


async def test_a_proxy_restart_keeps_every_owner(proxied: Proxied) -> None:
    vm_pod = await run(proxied, "qmprt", "vm-pod", "uid-vm")
    ctr_pod = await run(proxied, "", "ctr-pod", "uid-ctr")
    vm_ctr = await create(proxied, vm_pod, "disk.qcow2")
    assert proxied.server is not None
    saved = json.loads(proxied.server.owners.path.read_text())
    assert saved["sandboxes"] == {vm_pod: "vm", ctr_pod: "ctr"} and saved["containers"] == {vm_ctr: "vm"}
    client = await proxied.restart()
    status = await client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=vm_ctr))
    assert status.status.id == vm_ctr
    assert proxied.server is not None and proxied.server.owners.owner("sandboxes", ctr_pod) == "ctr"


async def test_a_lost_id_file_is_rebuilt_from_the_lists(proxied: Proxied) -> None:
    vm_pod = await run(proxied, "qmprt", "vm-pod", "uid-vm")
    ctr_pod = await run(proxied, "", "ctr-pod", "uid-ctr")
    assert proxied.server is not None
    path = proxied.server.owners.path
    await proxied.stop()
    path.write_text("{not json")
    client = await proxied.start()
    assert proxied.server is not None
    await proxied.server._refreshing  # the lists are asked for as the proxy starts
    assert proxied.server.owners.owner("sandboxes", vm_pod) == "vm"
    answer = await client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=ctr_pod))
    assert answer.status.id == ctr_pod
    assert json.loads(path.read_text())["sandboxes"] == {vm_pod: "vm", ctr_pod: "ctr"}


async def test_a_dead_downstream_is_named_and_the_other_keeps_working(proxied: Proxied) -> None:
    client = proxied.client
    assert client is not None
    vm_pod = await run(proxied, "qmprt", "vm-pod", "uid-vm")
    ctr_pod = await run(proxied, "", "ctr-pod", "uid-ctr")
    await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest())  # the proxy's last look at both
    await proxied.vm.stop()
    code, message = await status_of(client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=vm_pod)))
    assert code == grpc.StatusCode.UNAVAILABLE and "the vm runtime" in message and "vm.sock" in message
    code, message = await status_of(client.runtime.RunPodSandbox(
        cri.RunPodSandboxRequest(config=cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="n", uid="u2", namespace="d")), runtime_handler="qmprt")
    ))
    assert code == grpc.StatusCode.UNAVAILABLE and "vm" in message
    answer = await client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=ctr_pod))
    assert answer.status.id == ctr_pod
    # Its pods are still listed (as last seen), so kubelet does not take them for gone.
    listed = await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest())
    assert {item.id for item in listed.items} == {vm_pod, ctr_pod}
    only_vm = await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(id=vm_pod[:10])))
    assert [item.id for item in only_vm.items] == [vm_pod]
    status = await client.runtime.Status(cri.StatusRequest(verbose=True))
    conditions = {condition.type: condition for condition in status.status.conditions}
    assert conditions["RuntimeReady"].status  # the default runtime's: the node stays Ready
    assert not conditions["vm:RuntimeReady"].status and conditions["vm:RuntimeReady"].reason == "DownstreamUnavailable"
    assert not json.loads(status.info["downstreams"])["vm"]["reachable"]
    assert "vm=unavailable" in (await client.runtime.Version(cri.VersionRequest())).runtime_version
    await proxied.vm.start()
    for _ in range(50):  # the channel reconnects within its backoff (at most 1 s)
        code, _ = await status_of(client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=vm_pod)))
        if code == grpc.StatusCode.OK:
            break
        await asyncio.sleep(0.1)
    assert code == grpc.StatusCode.OK


async def test_a_dead_downstreams_pods_stay_listed_across_a_proxy_restart(proxied: Proxied) -> None:
    client = proxied.client
    assert client is not None
    vm_pod = await run(proxied, "qmprt", "vm-pod", "uid-vm")
    vm_ctr = await create(proxied, vm_pod, "disk.qcow2")
    await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest())
    await client.runtime.ListContainers(cri.ListContainersRequest())
    await proxied.vm.stop()
    client = await proxied.restart()
    listed = await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest())
    assert [item.id for item in listed.items] == [vm_pod]
    assert listed.items[0].metadata.name == "vm-pod" and listed.items[0].state == cri.SANDBOX_READY
    containers = await client.runtime.ListContainers(cri.ListContainersRequest(filter=cri.ContainerFilter(pod_sandbox_id=vm_pod)))
    assert [item.id for item in containers.containers] == [vm_ctr]
    code, message = await status_of(client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=vm_ctr)))
    assert code == grpc.StatusCode.UNAVAILABLE and "the vm runtime" in message
    # Once it is back, its own list is the truth again: a pod removed meanwhile disappears.
    proxied.vm.fake.containers.clear()
    proxied.vm.fake.sandboxes.clear()
    await proxied.vm.start()
    for _ in range(50):
        listed = await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest())
        if not listed.items:
            break
        await asyncio.sleep(0.1)
    assert not listed.items


async def test_a_downstream_down_at_start_is_reported_not_ready(proxied: Proxied) -> None:
    await proxied.stop()
    await proxied.ctr.stop()
    client = await proxied.start()
    status = await client.runtime.Status(cri.StatusRequest())
    conditions = {condition.type: condition for condition in status.status.conditions}
    assert not conditions["RuntimeReady"].status and "ctr" in conditions["RuntimeReady"].message
    assert conditions["vm:RuntimeReady"].status
    vm_pod = await run(proxied, "qmprt", "vm-pod", "uid-vm")
    assert vm_pod in proxied.vm.fake.sandboxes


async def test_a_runtime_that_starts_after_the_proxy_answers_its_first_call(proxied: Proxied) -> None:
    """The channel tried the socket before it existed and waits out a reconnect backoff; a call made
    right after the runtime comes up still reaches it."""
    await proxied.stop()
    await proxied.vm.stop()
    client = await proxied.start()
    assert proxied.server is not None
    await proxied.server._refreshing  # its first connection attempt failed
    await proxied.vm.start()
    answer = await client.runtime.RunPodSandbox(
        cri.RunPodSandboxRequest(config=cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="n", uid="u", namespace="d")), runtime_handler="qmprt")
    )
    assert answer.pod_sandbox_id in proxied.vm.fake.sandboxes


async def test_events_of_both_runtimes_arrive_in_one_stream(proxied: Proxied) -> None:
    client = proxied.client
    assert client is not None
    stream = client.runtime.GetContainerEvents(cri.GetEventsRequest())
    await asyncio.sleep(0.2)  # both followers subscribed
    vm_pod = await run(proxied, "qmprt", "vm-pod", "uid-vm")
    ctr_pod = await run(proxied, "", "ctr-pod", "uid-ctr")
    seen: set[str] = set()
    async with asyncio.timeout(5):
        async for event in stream:
            seen.add(event.container_id)
            if {vm_pod, ctr_pod} <= seen:
                break
    stream.cancel()


@pytest.mark.parametrize(
    "change, words",
    [
        ({"downstream": []}, "1 to 8 [[downstream]]"),
        ({"proxy": {"default": "nope"}}, "proxy.default 'nope' is not a downstream"),
        ({"proxy": {"state_dir": "relative"}}, "absolute"),
        ({"proxy": {"colour": 1}}, "[proxy] takes"),
        ({"extra": {}}, "unknown tables"),
        ({"downstream": [{"name": "Bad Name", "endpoint": "unix:///x.sock"}]}, "short lower-case name"),
        ({"downstream": [{"name": "a", "endpoint": "relative.sock"}]}, "absolute"),
        ({"downstream": [{"name": "a", "endpoint": "unix:///a.sock", "image_patterns": ["("]}]}, "not a regex"),
        ({"downstream": [{"name": "a", "endpoint": "unix:///a.sock", "handlers": ["x"]},
                         {"name": "b", "endpoint": "unix:///b.sock", "handlers": ["x"]}]}, "claimed by both"),
        ({"downstream": [{"name": "a", "endpoint": "unix:///a.sock", "handlers": ["UPPER"]}]}, "DNS label"),
        ({"downstream": [{"name": "a", "endpoint": "unix:///a.sock", "wat": 1}]}, "unknown keys"),
        ({"proxy": {"probe_timeout_seconds": "soon"}}, "probe_timeout_seconds"),
    ],
    ids=["no-downstreams", "bad-default", "relative-state", "unknown-key", "unknown-table", "bad-name",
         "relative-endpoint", "bad-regex", "handler-twice", "bad-handler", "unknown-downstream-key", "bad-timeout"],
)
def test_bad_configs_are_refused_with_the_reason(tmp_path: object, change: dict[str, object], words: str) -> None:
    from qmprt.errors import InvalidArgument
    from qmprt.proxy.config import proxy_config_from_table

    document: dict[str, object] = {
        "proxy": {"socket": "/run/p.sock", "state_dir": "/var/lib/p", "default": "a"},
        "downstream": [{"name": "a", "endpoint": "unix:///a.sock"}],
    }
    for key, value in change.items():
        if key == "proxy" and isinstance(value, dict):
            document["proxy"] = {**document["proxy"], **value}  # type: ignore[dict-item]
        else:
            document[key] = value
    if change.get("downstream") and "default" not in change.get("proxy", {}):  # type: ignore[operator]
        document["proxy"]["default"] = "a"  # type: ignore[index]
    with pytest.raises(InvalidArgument, match=None) as raised:
        proxy_config_from_table(document)
    assert words in str(raised.value)
