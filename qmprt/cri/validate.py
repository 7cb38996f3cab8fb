"""Checks of requests at the edge that protobuf types cannot express: sizes, text, security settings.

Every limit here is stated in the message that refuses a request (INVALID_ARGUMENT), so a person
knows what to change. The limits keep one object's metadata, and so kubelet's relist of every object,
well inside gRPC's message size: labels and annotations of one object add up to at most
``METADATA_MAX_BYTES`` (Kubernetes' own limit for a pod's annotations), names are short, text fields
hold no NUL or control characters (paths and names end up in files, argv and netlink).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

from cri_api.v1 import api_pb2 as cri

from qmprt.errors import InvalidArgument

NAME_MAX = 253  # a Kubernetes object name (DNS subdomain)
UID_MAX = 128
PATH_MAX = 4096
LABEL_KEY_MAX = 317  # prefix (253) + "/" + name (63)
METADATA_MAX_BYTES = 256 * 1024  # labels + annotations of one object: Kubernetes' TotalAnnotationSizeLimitB
MAP_ENTRIES_MAX = 1024
LIST_MAX = {"envs": 4096, "mounts": 256, "devices": 64, "port_mappings": 256, "dns_config": 64, "command": 4096, "args": 4096, "port": 64}
ARGV_MAX_BYTES = 1 << 20  # command + args + envs: they travel in the seed ISO
MEMORY_MAX_BYTES = 1 << 50  # 1 PiB: no host has more; far larger values are typos or attacks
CPU_PERIOD_MAX_US = 1_000_000  # the kernel's limit for cfs_period_us
CPU_SHARES_MAX = 262144
# cgroup v2 files the CRI's `unified` map may name (kubelet's memory QoS sets memory.min/high).
_UNIFIED_KEY = re.compile(r"(cpu|cpuset|memory|io|pids|hugetlb)\.[a-z0-9_]+(\.[a-z0-9_]+)*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def text(value: str, field: str, limit: int = PATH_MAX, *, control: bool = False) -> str:
    """``value`` within ``limit`` characters, without NUL (and without control characters unless
    ``control`` allows them: label, annotation and environment values may hold newlines)."""
    if len(value) > limit:
        raise InvalidArgument(f"{field} is {len(value)} characters long; at most {limit}")
    if "\x00" in value:
        raise InvalidArgument(f"{field} contains a NUL character")
    if not control and _CONTROL.search(value):
        raise InvalidArgument(f"{field} contains control characters")
    return value


def metadata_maps(labels: Mapping[str, str], annotations: Mapping[str, str], where: str) -> None:
    total = 0
    for kind, entries in (("labels", labels), ("annotations", annotations)):
        if len(entries) > MAP_ENTRIES_MAX:
            raise InvalidArgument(f"{where}{kind}: {len(entries)} entries; at most {MAP_ENTRIES_MAX}")
        for key, value in entries.items():
            if not key:
                raise InvalidArgument(f"{where}{kind}: an empty key")
            text(key, f"{where}{kind} key {key[:40]!r}", LABEL_KEY_MAX)
            text(value, f"{where}{kind}[{key[:40]!r}]", METADATA_MAX_BYTES, control=True)
            total += len(key.encode()) + len(value.encode())
    if total > METADATA_MAX_BYTES:
        raise InvalidArgument(
            f"{where}labels and annotations add up to {total} bytes; at most {METADATA_MAX_BYTES} (256 KiB)"
        )


def list_length(values: Iterable[object], field: str) -> None:
    count = len(list(values))
    if count > LIST_MAX[field]:
        raise InvalidArgument(f"{field}: {count} entries; at most {LIST_MAX[field]}")


def argv_size(command: Iterable[str], args: Iterable[str], envs: Iterable[tuple[str, str]]) -> None:
    total = 0
    for index, word in enumerate([*command, *args]):
        text(word, f"command/args[{index}]", ARGV_MAX_BYTES, control=True)
        total += len(word.encode())
    for key, value in envs:
        text(value, f"envs[{key[:40]!r}]", ARGV_MAX_BYTES, control=True)
        total += len(key.encode()) + len(value.encode())
    if total > ARGV_MAX_BYTES:
        raise InvalidArgument(f"command, args and envs add up to {total} bytes; at most {ARGV_MAX_BYTES} (1 MiB)")


def resources(linux: cri.LinuxContainerResources, where: str) -> None:
    """Bounds the kernel or any host would refuse anyway, refused here with the limit."""
    if linux.memory_limit_in_bytes > MEMORY_MAX_BYTES or linux.memory_swap_limit_in_bytes > MEMORY_MAX_BYTES:
        raise InvalidArgument(f"{where}: a memory limit above {MEMORY_MAX_BYTES} bytes (1 PiB) is not a real limit")
    if linux.cpu_period > CPU_PERIOD_MAX_US:
        raise InvalidArgument(f"{where}.cpu_period {linux.cpu_period} µs is above the kernel's {CPU_PERIOD_MAX_US}")
    if linux.cpu_quota > 0 and linux.cpu_period and linux.cpu_quota // linux.cpu_period > 1024:
        raise InvalidArgument(f"{where}.cpu_quota asks for more than 1024 CPUs")
    if linux.cpu_shares > CPU_SHARES_MAX:
        raise InvalidArgument(f"{where}.cpu_shares {linux.cpu_shares} is above {CPU_SHARES_MAX}")
    for field in ("cpuset_cpus", "cpuset_mems"):
        text(getattr(linux, field), f"{where}.{field}", 1024)
    for key, value in linux.unified.items():
        if not _UNIFIED_KEY.fullmatch(key):
            raise InvalidArgument(
                f"{where}.unified: {key[:60]!r} is not a cgroup v2 file of the cpu, cpuset, memory, io, pids or "
                "hugetlb controller"
            )
        text(value, f"{where}.unified[{key!r}]", 256)


def pod_cidr(value: str) -> str:
    """kubelet's pod CIDR: empty, or CIDRs separated by commas (dual-stack)."""
    for part in filter(None, value.split(",")):
        try:
            ipaddress.ip_network(part.strip(), strict=False)
        except ValueError as err:
            raise InvalidArgument(f"pod_cidr {value[:80]!r}: {part[:60]!r} is not a CIDR ({err})") from err
    return value


# -- what a VM pod does with Linux security settings (docs/conformance.md has the table) ------
# A VM is its own kernel: the settings that confine a process on the host kernel (capabilities,
# seccomp, AppArmor, SELinux, masked and read-only paths, no_new_privs, privileged, the user to run
# as) have no host process to apply to and are ignored; kubelet sends some of them for every pod.
# What a VM cannot be - one sharing the node's network, PID or IPC namespace - is refused, as is
# a combination every runtime refuses.

_NAMESPACES = {"network": "hostNetwork", "pid": "hostPID", "ipc": "hostIPC"}


def _check_namespaces(options: cri.NamespaceOption, where: str) -> None:
    for field, pod_field in _NAMESPACES.items():
        if getattr(options, field) == cri.NODE:
            raise InvalidArgument(
                f"{where}.namespace_options.{field} is NODE ({pod_field}: true): a VM pod has its own kernel "
                f"and cannot share the node's {field} namespace; run this pod with a container runtime"
            )
    if not options.HasField("userns_options"):
        return
    userns = options.userns_options
    if userns.mode in (cri.CONTAINER, cri.TARGET):
        raise InvalidArgument(
            f"{where}.namespace_options.userns_options.mode {cri.NamespaceMode.Name(userns.mode)} is not "
            "supported: give POD or NODE"
        )
    if userns.mode == cri.POD:
        # The guest's users never map to the node's; the mapping is checked as every runtime does and
        # has no effect in the VM.
        for kind, mappings in (("uids", userns.uids), ("gids", userns.gids)):
            if len(mappings) != 1:
                raise InvalidArgument(
                    f"{where}.namespace_options.userns_options.{kind}: give exactly one mapping, not {len(mappings)}"
                )
            if mappings[0].container_id != 0 or mappings[0].length == 0:
                raise InvalidArgument(
                    f"{where}.namespace_options.userns_options.{kind}: the mapping must start at container id 0 "
                    "and have a length"
                )
    elif userns.uids or userns.gids:
        raise InvalidArgument(f"{where}.namespace_options.userns_options: mappings need mode POD")


def check_sandbox_security(context: cri.LinuxSandboxSecurityContext) -> None:
    _check_namespaces(context.namespace_options, "linux.security_context")
    if context.HasField("run_as_group") and not context.HasField("run_as_user"):
        raise InvalidArgument("linux.security_context.run_as_group is set without run_as_user")


def check_container_security(context: cri.LinuxContainerSecurityContext) -> None:
    _check_namespaces(context.namespace_options, "linux.security_context")
    if context.HasField("run_as_group") and not (context.HasField("run_as_user") or context.run_as_username):
        raise InvalidArgument("linux.security_context.run_as_group is set without run_as_user or run_as_username")
    if context.readonly_rootfs:
        raise InvalidArgument(
            "linux.security_context.readonly_rootfs: a VM's root disk holds its guest operating system, "
            "which needs to write to it; qmprt cannot boot it read-only (mount read-only volumes instead)"
        )


