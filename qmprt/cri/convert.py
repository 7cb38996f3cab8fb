"""CRI requests → the pod layer's dataclasses, and the one mapping of internal states to CRI enums.

Requests are validated here, at the edge: whatever a person or kubelet can get wrong in a request
raises ``InvalidArgument`` with a message naming the field. Maps (labels, annotations) are copied
key by key and never normalised, so they round-trip byte for byte. The way back, dataclasses →
the protobuf messages of answers, is ``qmprt.cri.answers``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt.cloudinit import check_hostname
from qmprt.cri import validate
from qmprt.errors import InvalidArgument
from qmprt.pod.specs import (
    ContainerMetadata,
    ContainerSpec,
    DeviceSpec,
    DNSSettings,
    MountSpec,
    PortMapping,
    Resources,
    SandboxMetadata,
    SandboxSpec,
)
from qmprt.pod.states import ContainerState, SandboxState

# -- states ---------------------------------------------------------------------------------------

_CRI_STATES: Mapping[SandboxState | ContainerState, int] = {
    SandboxState.READY: cri.SANDBOX_READY,
    SandboxState.NOTREADY: cri.SANDBOX_NOTREADY,
    ContainerState.CREATED: cri.CONTAINER_CREATED,
    ContainerState.RUNNING: cri.CONTAINER_RUNNING,
    ContainerState.EXITED: cri.CONTAINER_EXITED,
    ContainerState.UNKNOWN: cri.CONTAINER_UNKNOWN,
}


def cri_state(state: SandboxState | ContainerState) -> Any:
    """The CRI enum value of an internal state: the one place states cross the wire."""
    return _CRI_STATES[state]


def sandbox_state_filter(value: int) -> SandboxState:
    """The internal state a ``PodSandboxStateValue`` filter asks for (the inverse of ``cri_state``)."""
    for state in SandboxState:
        if cri_state(state) == value:
            return state
    raise InvalidArgument(f"filter.state: {value} is not a PodSandboxState")


def container_state_filter(value: int) -> ContainerState:
    for state in ContainerState:
        if cri_state(state) == value:
            return state
    raise InvalidArgument(f"filter.state: {value} is not a ContainerState")


# -- requests → dataclasses -----------------------------------------------------------------------


def require_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(f"{field} is empty: name the object by its id (or a unique prefix of it)")


def sandbox_spec(config: cri.PodSandboxConfig, runtime_handler: str) -> SandboxSpec:
    if not config.HasField("metadata"):
        raise InvalidArgument("the pod sandbox config has no metadata: name, namespace and uid are required")
    metadata = config.metadata
    for field, limit in (("name", validate.NAME_MAX), ("namespace", validate.NAME_MAX), ("uid", validate.UID_MAX)):
        if not getattr(metadata, field):
            raise InvalidArgument(
                f"the pod sandbox config's metadata.{field} is empty (name, namespace and uid are required)"
            )
        validate.text(getattr(metadata, field), f"metadata.{field}", limit)
    validate.text(config.log_directory, "log_directory")
    if config.log_directory and not os.path.isabs(config.log_directory):
        raise InvalidArgument(f"log_directory {config.log_directory!r} must be an absolute path")
    if config.hostname:
        # A hostname someone set is theirs: refuse it rather than change it. Without one the guest
        # gets a name derived from metadata.name (SandboxSpec.guest_hostname).
        try:
            check_hostname(config.hostname)
        except ValueError as err:
            raise InvalidArgument(f"the pod sandbox config's hostname: {err}") from err
    validate.metadata_maps(config.labels, config.annotations, "")
    validate.list_length(config.port_mappings, "port_mappings")
    dns = config.dns_config
    for field in ("servers", "searches", "options"):
        validate.list_length(getattr(dns, field), "dns_config")
        for index, value in enumerate(getattr(dns, field)):
            validate.text(value, f"dns_config.{field}[{index}]", validate.NAME_MAX)
    linux = config.linux
    validate.text(linux.cgroup_parent, "linux.cgroup_parent")
    validate.check_sandbox_security(linux.security_context)
    validate.metadata_maps(linux.sysctls, {}, "linux.sysctls as ")
    return SandboxSpec(
        metadata=SandboxMetadata(
            name=metadata.name, uid=metadata.uid, namespace=metadata.namespace, attempt=metadata.attempt
        ),
        hostname=config.hostname,
        log_directory=config.log_directory,
        dns=DNSSettings(servers=tuple(dns.servers), searches=tuple(dns.searches), options=tuple(dns.options)),
        port_mappings=tuple(_port_mapping(mapping) for mapping in config.port_mappings),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        cgroup_parent=linux.cgroup_parent,
        overhead=resources(linux.overhead, "linux.overhead") if linux.HasField("overhead") else None,
        resources=resources(linux.resources, "linux.resources") if linux.HasField("resources") else None,
        runtime_handler=runtime_handler,
        sysctls=dict(linux.sysctls),
    )


def _mounts(mounts: Sequence[cri.Mount]) -> tuple[MountSpec, ...]:
    """Each mount well formed, each at its own absolute guest path (whether its host path exists is
    the node's to say, at create)."""
    specs = tuple(_mount(mount) for mount in mounts)
    seen: set[str] = set()
    for spec in specs:
        if spec.container_path in seen:
            raise InvalidArgument(f"mounts: two mounts at {spec.container_path[:200]!r}")
        seen.add(spec.container_path)
    return specs


def _mount(mount: cri.Mount) -> MountSpec:
    validate.text(mount.container_path, "mounts: container_path")
    validate.text(mount.host_path, "mounts: host_path")
    if not os.path.isabs(mount.container_path):
        raise InvalidArgument(
            f"mounts: container_path {mount.container_path[:200]!r} must be an absolute guest path"
        )
    if mount.HasField("image") and mount.image.image:
        raise InvalidArgument(
            f"mounts: {mount.container_path!r} is an image volume ({mount.image.image[:200]}): qmprt does not "
            "mount images into VM pods; put the files on a volume (configMap, PVC, hostPath) instead"
        )
    if mount.recursive_read_only and not mount.readonly:
        raise InvalidArgument(f"mounts: {mount.container_path!r} is recursive_read_only but not readonly")
    if mount.recursive_read_only and mount.propagation != cri.PROPAGATION_PRIVATE:
        raise InvalidArgument(
            f"mounts: {mount.container_path!r} is recursive_read_only with propagation "
            f"{_enum_name(cri.MountPropagation, mount.propagation)}: recursive read-only mounts need "
            "PROPAGATION_PRIVATE"
        )
    return MountSpec(
        container_path=mount.container_path, host_path=mount.host_path, readonly=mount.readonly,
        propagation=_enum_name(cri.MountPropagation, mount.propagation, "mounts: propagation"),
    )


def _enum_name(enum: Any, value: int, field: str = "") -> str:
    try:
        return str(enum.Name(value))
    except ValueError as err:
        raise InvalidArgument(f"{field or enum.DESCRIPTOR.name}: {value} is not one of {', '.join(enum.keys())}") from err


def _device(device: cri.Device) -> DeviceSpec:
    for field in ("container_path", "host_path"):
        path = validate.text(getattr(device, field), f"devices: {field}")
        if not os.path.isabs(path):
            raise InvalidArgument(f"devices: {field} {path[:200]!r} must be an absolute path")
    validate.text(device.permissions, "devices: permissions", 3)
    if device.permissions.strip("rwm"):
        raise InvalidArgument(f"devices: permissions {device.permissions!r} may hold only r, w and m")
    return DeviceSpec(
        container_path=device.container_path, host_path=device.host_path, permissions=device.permissions or "rwm"
    )


def _port_mapping(mapping: cri.PortMapping) -> PortMapping:
    if not 0 < mapping.container_port < 65536:
        raise InvalidArgument(f"port_mappings: container_port {mapping.container_port} is not a port (1-65535)")
    if not 0 <= mapping.host_port < 65536:
        raise InvalidArgument(f"port_mappings: host_port {mapping.host_port} is not a port (0-65535)")
    if mapping.host_ip:
        try:
            ipaddress.ip_address(mapping.host_ip)
        except ValueError as err:
            raise InvalidArgument(f"port_mappings: host_ip {mapping.host_ip[:80]!r} is not an IP address") from err
    return PortMapping(
        protocol=_enum_name(cri.Protocol, mapping.protocol, "port_mappings: protocol"),
        container_port=mapping.container_port,
        host_port=mapping.host_port,
        host_ip=mapping.host_ip,
    )


def container_spec(config: cri.ContainerConfig) -> ContainerSpec:
    if not config.HasField("metadata"):
        raise InvalidArgument("the container config has no metadata: metadata.name is required")
    if not config.metadata.name:
        raise InvalidArgument("the container config's metadata.name is empty")
    validate.text(config.metadata.name, "metadata.name", validate.NAME_MAX)
    if not config.image.image:
        raise InvalidArgument("the container config names no image: image.image is empty")
    validate.text(config.image.image, "image.image")
    log_path = validate.text(config.log_path, "log_path")
    if os.path.isabs(log_path) or ".." in log_path.split("/"):
        raise InvalidArgument(
            f"log_path {log_path!r} must be relative to the sandbox's log_directory, without '..'"
        )
    validate.text(config.working_dir, "working_dir")
    for field in ("envs", "mounts", "devices", "command", "args"):
        validate.list_length(getattr(config, field), field)
    for env in config.envs:
        validate.text(env.key, "envs: a key", validate.NAME_MAX)
        if not env.key or "=" in env.key:
            raise InvalidArgument(f"envs: {env.key!r} is not an environment variable name")
    validate.argv_size(config.command, config.args, ((env.key, env.value) for env in config.envs))
    validate.metadata_maps(config.labels, config.annotations, "")
    linux = config.linux
    validate.check_container_security(linux.security_context)
    return ContainerSpec(
        metadata=ContainerMetadata(name=config.metadata.name, attempt=config.metadata.attempt),
        image=config.image.image,
        command=tuple(config.command),
        args=tuple(config.args),
        working_dir=config.working_dir,
        envs=tuple((env.key, env.value) for env in config.envs),
        mounts=_mounts(config.mounts),
        devices=tuple(_device(d) for d in config.devices),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        log_path=log_path,
        tty=config.tty,
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        resources=resources(linux.resources, "linux.resources") if linux.HasField("resources") else None,
    )


# The fields ``Resources`` and ``LinuxContainerResources`` share, by name and type (both ways).
RESOURCE_SCALARS = (
    "cpu_period", "cpu_quota", "cpu_shares", "memory_limit_in_bytes",
    "cpuset_cpus", "cpuset_mems", "oom_score_adj", "memory_swap_limit_in_bytes",
)


def resources(linux: cri.LinuxContainerResources, where: str) -> Resources:
    for name in ("cpu_period", "cpu_shares", "memory_limit_in_bytes", "memory_swap_limit_in_bytes"):
        if getattr(linux, name) < 0:
            raise InvalidArgument(f"{where}.{name} is negative ({getattr(linux, name)})")
    if linux.cpu_quota < -1:
        raise InvalidArgument(f"{where}.cpu_quota must be -1 (no limit), 0 (unset) or positive")
    if linux.cpu_quota > 0 and linux.cpu_period == 0:
        raise InvalidArgument(f"{where}.cpu_quota is set without cpu_period")
    validate.resources(linux, where)
    return Resources(
        **{name: getattr(linux, name) for name in RESOURCE_SCALARS},
        hugepage_limits=tuple((limit.page_size, limit.limit) for limit in linux.hugepage_limits),
        unified=tuple(sorted(linux.unified.items())),
    )
