"""Pure conversions: the state table, resources both ways, repository names of images."""

from __future__ import annotations

import pytest
from cri_api.v1 import api_pb2 as cri

from qmprt.cri import answers, convert
from qmprt.errors import InvalidArgument
from qmprt.pod.specs import Resources
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
        hugepage_limits=[cri.HugepageLimit(page_size="1GB", limit=1 << 30)], unified={"memory.min": "2", "memory.high": "1"},
    )
    resources = convert.resources(linux, "linux")
    assert resources.unified == (("memory.high", "1"), ("memory.min", "2"))
    assert answers.linux_resources(resources) == linux
    assert answers.linux_resources(Resources()) == cri.LinuxContainerResources()


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
    assert answers._repository(name) == repository


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


def _pod(**linux: object) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="p", uid="u", namespace="n"), linux=cri.LinuxPodSandboxConfig(**linux)
    )


def test_sandbox_sysctls_and_hostname_reach_the_spec() -> None:
    spec = convert.sandbox_spec(_pod(sysctls={"kernel.shm_rmid_forced": "1"}), "")
    assert spec.sysctls == {"kernel.shm_rmid_forced": "1"}
    assert spec.hostname == "" and spec.guest_hostname == "p"


def _namespaces(**fields: object) -> cri.LinuxSandboxSecurityContext:
    return cri.LinuxSandboxSecurityContext(namespace_options=cri.NamespaceOption(**fields))


def _userns(mode: int, uids: int = 1, gids: int = 1, container_id: int = 0) -> cri.LinuxSandboxSecurityContext:
    mapping = [cri.IDMapping(host_id=100000, container_id=container_id, length=65536)]
    return _namespaces(userns_options=cri.UserNamespace(mode=mode, uids=mapping * uids, gids=mapping * gids))


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (_namespaces(network=cri.NODE), "hostNetwork"),
        (_namespaces(pid=cri.NODE), "hostPID"),
        (_namespaces(ipc=cri.NODE), "hostIPC"),
        (_userns(cri.CONTAINER), "not supported"),
        (_userns(cri.TARGET), "not supported"),
        (_userns(cri.POD, uids=2), "exactly one mapping"),
        (_userns(cri.POD, gids=0), "exactly one mapping"),
        (_userns(cri.POD, container_id=1), "container id 0"),
        (_userns(cri.NODE), "need mode POD"),
        (cri.LinuxSandboxSecurityContext(run_as_group=cri.Int64Value(value=5)), "without run_as_user"),
    ],
    ids=["host-network", "host-pid", "host-ipc", "userns-container", "userns-target", "two-uid-maps",
         "no-gid-map", "root-unmapped", "node-with-maps", "group-without-user"],
)
def test_what_a_vm_cannot_be_is_refused_at_run_pod_sandbox(
    context: cri.LinuxSandboxSecurityContext, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        convert.sandbox_spec(_pod(security_context=context), "")


@pytest.mark.parametrize(
    "context",
    [
        _namespaces(network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD),
        _userns(cri.POD),
        _namespaces(userns_options=cri.UserNamespace(mode=cri.NODE)),
        cri.LinuxSandboxSecurityContext(
            privileged=True, run_as_user=cri.Int64Value(value=1000), run_as_group=cri.Int64Value(value=1000),
            seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault),
            selinux_options=cri.SELinuxOption(level="s0:c1"),
        ),
    ],
    ids=["kubelet-default", "userns-pod", "userns-node", "confinement-settings"],
)
def test_settings_that_confine_host_processes_are_accepted(context: cri.LinuxSandboxSecurityContext) -> None:
    convert.sandbox_spec(_pod(security_context=context), "")


def test_an_explicit_invalid_hostname_is_refused() -> None:
    config = _pod()
    config.hostname = "bad_name"
    with pytest.raises(InvalidArgument, match="hostname"):
        convert.sandbox_spec(config, "")


def _container(**changes: object) -> cri.ContainerConfig:
    config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name="c"), image=cri.ImageSpec(image="i"))
    for key, value in changes.items():
        if isinstance(value, list):
            getattr(config, key).extend(value)
        else:
            getattr(config, key).CopyFrom(value)
    return config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_container(mounts=[cri.Mount(container_path="/d", image=cri.ImageSpec(image="busybox"))]), "image volume"),
        (_container(mounts=[cri.Mount(container_path="/d", host_path="/h", recursive_read_only=True)]),
         "not readonly"),
        (_container(mounts=[cri.Mount(container_path="/d", host_path="/h", readonly=True, recursive_read_only=True,
                                      propagation=cri.PROPAGATION_HOST_TO_CONTAINER)]), "PROPAGATION_PRIVATE"),
        (_container(linux=cri.LinuxContainerConfig(
            security_context=cri.LinuxContainerSecurityContext(readonly_rootfs=True))), "readonly_rootfs"),
        (_container(linux=cri.LinuxContainerConfig(
            security_context=cri.LinuxContainerSecurityContext(run_as_group=cri.Int64Value(value=3)))),
         "without run_as_user"),
        (_container(linux=cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
            namespace_options=cri.NamespaceOption(pid=cri.NODE)))), "hostPID"),
    ],
    ids=["image-volume", "rro-not-ro", "rro-propagation", "readonly-rootfs", "group-without-user", "host-pid"],
)
def test_container_settings_a_vm_cannot_honour_are_refused(config: cri.ContainerConfig, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        convert.container_spec(config)


def test_container_confinement_settings_kubelet_sends_are_accepted() -> None:
    context = cri.LinuxContainerSecurityContext(
        capabilities=cri.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["ALL"]),
        masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"], no_new_privs=True, privileged=False,
        run_as_user=cri.Int64Value(value=1000), run_as_group=cri.Int64Value(value=1000),
        apparmor=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault),
    )
    spec = convert.container_spec(
        _container(
            linux=cri.LinuxContainerConfig(security_context=context),
            mounts=[cri.Mount(container_path="/d", host_path="/h", readonly=True, recursive_read_only=True)],
        )
    )
    assert spec.mounts[0].readonly


def test_mount_propagation_round_trips_to_the_status() -> None:
    spec = convert.container_spec(
        _container(mounts=[cri.Mount(container_path="/d", host_path="/h", propagation=cri.PROPAGATION_HOST_TO_CONTAINER)])
    )
    assert spec.mounts[0].propagation == "PROPAGATION_HOST_TO_CONTAINER"
