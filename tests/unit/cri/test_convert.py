"""Pure conversions: the state table, resources both ways, repository names of images."""

from __future__ import annotations

import pytest
from cri_api.v1 import api_pb2 as cri

from qmprt.cri import convert
from qmprt.errors import InvalidArgument
from qmprt.pod.model import Resources
from qmprt.pod.states import ContainerState, SandboxState


def test_every_internal_state_has_its_own_cri_state() -> None:
    assert sorted(convert.cri_state(state) for state in SandboxState) == sorted(cri.PodSandboxState.values())
    assert sorted(convert.cri_state(state) for state in ContainerState) == sorted(cri.ContainerState.values())


@pytest.mark.parametrize("state", list(ContainerState), ids=[s.value for s in ContainerState])
def test_container_filters_invert_the_table(state: ContainerState) -> None:
    assert convert.container_state_filter(convert.cri_state(state)) == state


@pytest.mark.parametrize("state", list(SandboxState), ids=[s.value for s in SandboxState])
def test_sandbox_filters_invert_the_table(state: SandboxState) -> None:
    assert convert.sandbox_state_filter(convert.cri_state(state)) == state


def test_unknown_filter_state_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        convert.container_state_filter(42)


def test_resources_round_trip() -> None:
    linux = cri.LinuxContainerResources(
        cpu_period=100000, cpu_quota=-1, cpu_shares=2, memory_limit_in_bytes=1 << 30, oom_score_adj=-997,
        cpuset_cpus="1", cpuset_mems="0", memory_swap_limit_in_bytes=1 << 30,
        hugepage_limits=[cri.HugepageLimit(page_size="1GB", limit=1 << 30)], unified={"b": "2", "a": "1"},
    )
    resources = convert.resources(linux, "linux")
    assert resources.unified == (("a", "1"), ("b", "2"))
    assert convert.linux_resources(resources) == linux
    assert convert.linux_resources(Resources()) == cri.LinuxContainerResources()


@pytest.mark.parametrize(
    ("name", "repository"),
    [
        ("tiny", "tiny"),
        ("tiny:1.0", "tiny"),
        ("registry.example:5000/vm/tiny:1.0", "registry.example:5000/vm/tiny"),
        ("registry.example:5000/vm/tiny", "registry.example:5000/vm/tiny"),
        ("https://images.example/tiny.qcow2", "https://images.example/tiny.qcow2"),
    ],
    ids=["bare", "tagged", "registry-port-tag", "registry-port", "url"],
)
def test_repo_digests_drop_the_tag(name: str, repository: str) -> None:
    assert convert._repository(name) == repository


def test_sandbox_spec_keeps_everything_the_pod_layer_needs() -> None:
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="p", uid="u", namespace="n", attempt=1),
        hostname="h",
        log_directory="/var/log/pods/x",
        dns_config=cri.DNSConfig(servers=["10.96.0.10"], searches=["svc.cluster.local"], options=["ndots:5"]),
        port_mappings=[cri.PortMapping(protocol=cri.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1")],
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent="kubepods-besteffort.slice", overhead=cri.LinuxContainerResources(memory_limit_in_bytes=1)
        ),
    )
    spec = convert.sandbox_spec(config, "qmprt")
    assert spec.dns.options == ("ndots:5",) and spec.hostname == "h"
    assert spec.port_mappings[0].protocol == "UDP" and spec.port_mappings[0].host_ip == "127.0.0.1"
    assert spec.cgroup_parent == "kubepods-besteffort.slice"
    assert spec.overhead == Resources(memory_limit_in_bytes=1) and spec.resources is None
    assert spec.runtime_handler == "qmprt"
