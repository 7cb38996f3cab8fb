"""Version, Status, RuntimeConfig and UpdateRuntimeConfig: what kubelet checks on every node."""

from __future__ import annotations

import json

import pytest
from cri_api.v1 import api_pb2 as cri

from qmprt.pod.types import RuntimeHealth

from .conftest import Client
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


async def test_metrics_calls_answer_empty(client: Client) -> None:
    descriptors = await client.runtime.ListMetricDescriptors(cri.ListMetricDescriptorsRequest())
    metrics = await client.runtime.ListPodSandboxMetrics(cri.ListPodSandboxMetricsRequest())
    assert not descriptors.descriptors and not metrics.pod_metrics
