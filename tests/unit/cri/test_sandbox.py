"""Pod sandbox calls: validation at the edge, handlers, round-trips, idempotence, filters."""

from __future__ import annotations

import json

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from .conftest import ODD_LABELS, Client, pod_config, replace_config, run_pod, status_of
from .fake import FakeRuntime



@pytest.mark.parametrize(
    ("config", "message"),
    [
        (cri.PodSandboxConfig(), "no metadata"),
        (cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(uid="u", namespace="d")), "metadata.name is empty"),
        (cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="p", namespace="d")), "metadata.uid is empty"),
        (pod_config(log_directory="relative/dir"), "must be an absolute path"),
        (pod_config(port_mappings=[cri.PortMapping(container_port=0)]), "container_port 0"),
        (
            pod_config(
                linux=cri.LinuxPodSandboxConfig(resources=cri.LinuxContainerResources(memory_limit_in_bytes=-1))
            ),
            "memory_limit_in_bytes is negative",
        ),
    ],
    ids=["no-metadata", "no-name", "no-uid", "relative-log-dir", "bad-port", "negative-memory"],
)
async def test_malformed_sandboxes_are_invalid_and_leave_nothing(
    client: Client, fake: FakeRuntime, config: cri.PodSandboxConfig, message: str
) -> None:
    code, details = await status_of(client.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details
    assert not fake.sandboxes
    assert not [call for call in fake.calls if call[0] == "run_sandbox"], "rejected before the pod layer"


async def test_a_request_without_config_is_invalid(client: Client) -> None:
    code, details = await status_of(client.runtime.RunPodSandbox(cri.RunPodSandboxRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "config" in details


async def test_unknown_runtime_handler_is_rejected(client: Client, fake: FakeRuntime) -> None:
    code, details = await status_of(
        client.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config(), runtime_handler="runc"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'runc'" in details and "'qmprt'" in details
    assert not fake.sandboxes


@pytest.mark.parametrize("handler", ["", "qmprt", "kata-like"], ids=["default", "qmprt", "configured-extra"])
async def test_runtime_handler_is_echoed(client: Client, fake: FakeRuntime, handler: str) -> None:
    replace_config(fake, handlers=("qmprt", "kata-like"))
    pod_id = await run_pod(client, handler=handler)
    status = await client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert status.status.runtime_handler == handler
    listed = await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest())
    assert [item.runtime_handler for item in listed.items] == [handler]


async def test_metadata_labels_annotations_round_trip_byte_for_byte(client: Client, fake: FakeRuntime) -> None:
    config = pod_config(name="wëb-ö", uid="7f3c-ü")
    config.metadata.namespace = "ns-ß"
    config.metadata.attempt = 3
    config.labels.clear()
    config.labels.update(ODD_LABELS)
    config.annotations.update({**ODD_LABELS, "kubernetes.io/config.seen": "2024-01-01T00:00:00.000000000Z"})
    pod_id = await run_pod(client, config)

    status = (await client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))).status
    [listed] = (await client.runtime.ListPodSandbox(cri.ListPodSandboxRequest())).items
    for got in (status, listed):
        assert got.metadata == config.metadata
        assert dict(got.labels) == dict(config.labels)
        assert dict(got.annotations) == dict(config.annotations)
        assert {k.encode(): v.encode() for k, v in got.labels.items()} == {
            k.encode(): v.encode() for k, v in ODD_LABELS.items()
        }


async def test_status_fields(client: Client, fake: FakeRuntime) -> None:
    pod_id = await run_pod(client)
    response = await client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    status = response.status
    assert status.id == pod_id
    assert status.state == cri.SANDBOX_READY
    assert status.created_at == fake.sandboxes[pod_id].status.created_at_ns > 10**18  # nanoseconds
    assert status.network.ip == "10.88.0.7"
    assert [ip.ip for ip in status.network.additional_ips] == ["fd00::7"]
    assert status.linux.namespaces.options.network == cri.POD
    assert not response.info


async def test_status_by_unique_prefix_answers_the_full_id(client: Client) -> None:
    pod_id = await run_pod(client)
    response = await client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id[:8]))
    assert response.status.id == pod_id


async def test_verbose_status_carries_json_info(client: Client) -> None:
    pod_id = await run_pod(client)
    response = await client.runtime.PodSandboxStatus(
        cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    )
    info = json.loads(response.info["info"])
    assert info["id"] == pod_id and info["spec"]["metadata"]["name"] == "web"


async def test_status_of_unknown_sandbox_is_not_found(client: Client) -> None:
    code, _ = await status_of(client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id="f00d")))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_empty_id_is_invalid(client: Client) -> None:
    code, _ = await status_of(client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_stop_and_remove_are_idempotent(client: Client) -> None:
    pod_id = await run_pod(client)
    for _ in range(2):
        await client.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    status = await client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert status.status.state == cri.SANDBOX_NOTREADY
    for _ in range(2):
        await client.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    await client.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await client.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id="never-existed"))
    await client.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id="never-existed"))
    code, _ = await status_of(client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id)))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_a_duplicate_sandbox_already_exists(client: Client) -> None:
    await run_pod(client)
    code, _ = await status_of(client.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config())))
    assert code == grpc.StatusCode.ALREADY_EXISTS


async def _list(client: Client, **filter_fields: object) -> set[str]:
    request = cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(**filter_fields))  # type: ignore[arg-type]
    return {item.id for item in (await client.runtime.ListPodSandbox(request)).items}


async def test_list_filters_are_anded(client: Client) -> None:
    a = await run_pod(client, pod_config("a", "ua", labels={"app": "web", "tier": "front"}))
    b = await run_pod(client, pod_config("b", "ub", labels={"app": "web", "tier": "back"}))
    c = await run_pod(client, pod_config("c", "uc", labels={"app": "db"}))
    await client.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=b))

    ready = cri.PodSandboxStateValue(state=cri.SANDBOX_READY)
    notready = cri.PodSandboxStateValue(state=cri.SANDBOX_NOTREADY)
    assert await _list(client) == {a, b, c}
    assert await _list(client, id=a) == {a}
    assert await _list(client, id=a[:10]) == {a}
    assert await _list(client, id="0" * 64) == set()
    assert await _list(client, state=ready) == {a, c}
    assert await _list(client, state=notready) == {b}
    assert await _list(client, label_selector={"app": "web"}) == {a, b}
    assert await _list(client, label_selector={"app": "web", "tier": "back"}) == {b}
    assert await _list(client, label_selector={"app": "web"}, state=ready) == {a}
    assert await _list(client, label_selector={"app": "web"}, state=ready, id=b) == set()
    assert await _list(client, label_selector={"app": "web", "missing": ""}) == set()
