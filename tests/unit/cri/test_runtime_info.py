"""Version, Status, RuntimeConfig and UpdateRuntimeConfig: what kubelet checks on every node."""

from __future__ import annotations

import json

import pytest
from cri_api.v1 import api_pb2 as cri

from qmprt.pod.views import RuntimeHealth

from .conftest import Client, create_container, run_pod
from .fake import FakeRuntime


async def test_version_is_what_kubelet_accepts(client: Client) -> None:
    response = await client.runtime.Version(cri.VersionRequest(version="v1"))
    assert response.version == "0.1.0"
    assert response.runtime_name == "qmprt"
    assert response.runtime_version
    assert response.runtime_api_version == "v1"


async def test_network_is_not_ready_without_a_cni_config(client: Client) -> None:
    response = await client.runtime.Status(cri.StatusRequest())
    conditions = {condition.type: condition for condition in response.status.conditions}
    assert conditions["RuntimeReady"].status is True
    assert conditions["NetworkReady"].status is False
    assert conditions["NetworkReady"].reason == "NetworkPluginNotReady"
    assert "CNI" in conditions["NetworkReady"].message


async def test_status_reflects_the_runtime_health(client: Client, fake: FakeRuntime) -> None:
    fake.health_value = RuntimeHealth(False, "StateDirUnwritable", "disk full", True, "", "")
    response = await client.runtime.Status(cri.StatusRequest())
    conditions = {condition.type: condition for condition in response.status.conditions}
    assert (conditions["RuntimeReady"].status, conditions["RuntimeReady"].reason) == (False, "StateDirUnwritable")
    assert conditions["NetworkReady"].status is True


async def test_status_lists_the_handlers_and_verbose_carries_the_config(client: Client, fake: FakeRuntime) -> None:
    quiet = await client.runtime.Status(cri.StatusRequest())
    assert [handler.name for handler in quiet.runtime_handlers] == ["", *fake.config.runtime.handlers]
    assert not quiet.info
    verbose = await client.runtime.Status(cri.StatusRequest(verbose=True))
    assert json.loads(verbose.info["config"])["runtime"]["socket"] == fake.config.runtime.socket


@pytest.mark.parametrize(
    ("driver", "expected"), [("cgroupfs", cri.CGROUPFS), ("systemd", cri.SYSTEMD)], ids=["cgroupfs", "systemd"]
)
async def test_runtime_config_names_the_cgroup_driver(
    client: Client, fake: FakeRuntime, driver: str, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake, "cgroup_driver_name", lambda: driver)
    response = await client.runtime.RuntimeConfig(cri.RuntimeConfigRequest())
    assert response.linux.cgroup_driver == expected


async def test_update_runtime_config_passes_the_pod_cidr(client: Client, fake: FakeRuntime) -> None:
    request = cri.UpdateRuntimeConfigRequest(
        runtime_config=cri.RuntimeConfig(network_config=cri.NetworkConfig(pod_cidr="10.244.1.0/24"))
    )
    await client.runtime.UpdateRuntimeConfig(request)
    assert fake.pod_cidr == "10.244.1.0/24"


async def test_metric_descriptors_have_help_labels_and_unique_names(client: Client) -> None:
    descriptors = (await client.runtime.ListMetricDescriptors(cri.ListMetricDescriptorsRequest())).descriptors
    names = [d.name for d in descriptors]
    assert len(names) == len(set(names)) and len(names) >= 40
    for descriptor in descriptors:
        assert descriptor.help and list(descriptor.label_keys[:5]) == ["container", "id", "image", "namespace", "pod"]
    by_name = {d.name: list(d.label_keys) for d in descriptors}
    assert by_name["container_network_receive_bytes_total"][-1] == "interface"
    assert by_name["container_memory_failures_total"][-2:] == ["failure_type", "scope"]


async def test_pod_sandbox_metrics_carry_pod_and_container_samples(client: Client, fake: FakeRuntime) -> None:
    pod_id = await run_pod(client)
    container_id = await create_container(client, fake, pod_id)
    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
    pods = (await client.runtime.ListPodSandboxMetrics(cri.ListPodSandboxMetricsRequest())).pod_metrics
    assert [p.pod_sandbox_id for p in pods] == [pod_id]
    network = pods[0].metrics[0]
    assert network.name == "container_network_receive_bytes_total" and network.metric_type == cri.COUNTER
    assert network.value.value == 1 and network.label_values[-1] == "eth0"
    [container] = pods[0].container_metrics
    assert container.container_id == container_id and container.metrics[0].value.value == 2
