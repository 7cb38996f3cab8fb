"""cAdvisor-style metrics of VM pods, for kubelet's CRI-only stats (ListPodSandboxMetrics).

A container's metrics come from its VM's host side: the VM's cgroup (CPU, memory, block I/O, OOM
kills, pids), QEMU's processes (threads, file descriptors, sockets), its overlay's filesystem and its
spec; a pod's network metrics from the devices in its network namespace that carry every frame of
the guest's NICs (the CNI interface, or its macvtap), named after the pod's interface. Values are whole numbers, as the CRI's ``Metric.value`` (a uint64) is:
seconds are floored. Collection reads files and enters namespaces, so it runs in a worker thread.

Every descriptor has the label keys ``BASE_LABELS`` (plus its own), and every sample the values for
them: the container's name, id and image, the pod's namespace and name. Pod-level samples (the
network) use ``POD`` as the container name and the sandbox id, as cAdvisor does for a pod's
infrastructure container.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import psutil

from qmprt.cgroups import CgroupCounters
from qmprt.errors import QmprtError
from qmprt.net.stats import InterfaceCounters, interface_counters
from qmprt.pod.live import Container, Sandbox
from qmprt.pod.states import ContainerState
from qmprt.pod.stats import disk_usage, mountpoint_of

MetricKind = Literal["counter", "gauge"]
BASE_LABELS = ("container", "id", "image", "namespace", "pod")


@dataclass(frozen=True)
class MetricDescriptor:
    name: str
    help: str
    label_keys: tuple[str, ...]
    kind: MetricKind


@dataclass(frozen=True)
class MetricSample:
    name: str
    kind: MetricKind
    label_values: tuple[str, ...]
    value: int
    timestamp_ns: int


@dataclass(frozen=True)
class ContainerMetricsInfo:
    container_id: str
    samples: tuple[MetricSample, ...]


@dataclass(frozen=True)
class SandboxMetricsInfo:
    sandbox_id: str
    samples: tuple[MetricSample, ...]
    containers: tuple[ContainerMetricsInfo, ...]


def _descriptors() -> tuple[MetricDescriptor, ...]:
    counter: MetricKind = "counter"
    gauge: MetricKind = "gauge"
    rows: list[tuple[str, MetricKind, tuple[str, ...], str]] = [
        ("container_cpu_usage_seconds_total", counter, (), "CPU time the VM's host processes used"),
        ("container_cpu_user_seconds_total", counter, (), "user CPU time of the VM's host processes"),
        ("container_cpu_system_seconds_total", counter, (), "system CPU time of the VM's host processes"),
        ("container_cpu_cfs_periods_total", counter, (), "enforcement periods of the VM's CPU quota that elapsed"),
        ("container_cpu_cfs_throttled_periods_total", counter, (), "periods in which the VM hit its CPU quota"),
        ("container_cpu_cfs_throttled_seconds_total", counter, (), "time the VM was throttled by its CPU quota"),
        ("container_memory_usage_bytes", gauge, (), "memory charged to the VM's cgroup, page cache included"),
        ("container_memory_working_set_bytes", gauge, (), "memory usage less inactive file pages"),
        ("container_memory_max_usage_bytes", gauge, (), "the highest memory usage recorded"),
        ("container_memory_cache", gauge, (), "page cache charged to the VM's cgroup"),
        ("container_memory_rss", gauge, (), "anonymous memory of the VM (guest RAM it touched, QEMU's heap)"),
        ("container_memory_mapped_file", gauge, (), "memory-mapped file pages charged to the VM"),
        ("container_memory_swap", gauge, (), "swap the VM uses"),
        ("container_memory_kernel_usage", gauge, (), "kernel memory charged to the VM's cgroup"),
        ("container_memory_failcnt", counter, (), "times the VM's memory usage hit its limit"),
        ("container_memory_failures_total", counter, ("failure_type", "scope"), "page faults of the VM's processes"),
        ("container_oom_events_total", counter, (), "OOM kills in the VM's cgroup"),
        ("container_processes", gauge, (), "host processes of the VM"),
        ("container_threads", gauge, (), "threads of the VM's host processes (one per vCPU and I/O thread)"),
        ("container_threads_max", gauge, (), "the VM cgroup's pids limit"),
        ("container_file_descriptors", gauge, (), "open file descriptors of the VM's host processes"),
        ("container_sockets", gauge, (), "open sockets of the VM's host processes"),
        ("container_fs_usage_bytes", gauge, ("device",), "bytes the container's overlay and files take"),
        ("container_fs_limit_bytes", gauge, ("device",), "size of the filesystem holding the overlay"),
        ("container_fs_inodes_total", gauge, ("device",), "inodes of the filesystem holding the overlay"),
        ("container_fs_inodes_free", gauge, ("device",), "free inodes of the filesystem holding the overlay"),
        ("container_fs_reads_bytes_total", counter, ("device",), "bytes the VM read from block devices"),
        ("container_fs_reads_total", counter, ("device",), "reads the VM completed from block devices"),
        ("container_fs_writes_bytes_total", counter, ("device",), "bytes the VM wrote to block devices"),
        ("container_fs_writes_total", counter, ("device",), "writes the VM completed to block devices"),
        ("container_blkio_device_usage_total", counter, ("device", "major", "minor", "operation"),
         "block I/O bytes of the VM by device and operation"),
        ("container_spec_cpu_period", gauge, (), "the CPU quota period in microseconds"),
        ("container_spec_cpu_quota", gauge, (), "the CPU quota in microseconds per period"),
        ("container_spec_cpu_shares", gauge, (), "the CPU shares"),
        ("container_spec_memory_limit_bytes", gauge, (), "the memory limit of the container"),
        ("container_spec_memory_swap_limit_bytes", gauge, (), "the memory + swap limit of the container"),
        ("container_spec_memory_reservation_limit_bytes", gauge, (), "the memory reservation (qmprt sets none: 0)"),
        ("container_start_time_seconds", gauge, (), "when the VM started, in seconds since the epoch"),
        ("container_last_seen", gauge, (), "when these metrics were collected, in seconds since the epoch"),
    ]
    for direction, verb in (("receive", "received"), ("transmit", "sent")):
        for what, help_text in (("bytes", "bytes"), ("packets", "packets"), ("errors", "errors"),
                                ("packets_dropped", "packets dropped")):
            rows.append((f"container_network_{direction}_{what}_total", counter, ("interface",),
                         f"{help_text} {verb} on the pod's interface"))
    return tuple(MetricDescriptor(name, help_text, BASE_LABELS + extra, kind) for name, kind, extra, help_text in rows)


DESCRIPTORS = _descriptors()
_BY_NAME = {descriptor.name: descriptor for descriptor in DESCRIPTORS}
_SECOND_NS = 1_000_000_000


class _Samples:
    """Appends samples for one label set, checking each name against its descriptor."""

    def __init__(self, base_values: tuple[str, ...], timestamp_ns: int) -> None:
        self.base_values = base_values
        self.timestamp_ns = timestamp_ns
        self.samples: list[MetricSample] = []

    def add(self, name: str, value: int | None, *extra_values: str) -> None:
        if value is None:
            return
        descriptor = _BY_NAME[name]
        assert len(descriptor.label_keys) == len(self.base_values) + len(extra_values), name
        self.samples.append(
            MetricSample(name, descriptor.kind, self.base_values + extra_values, max(0, value), self.timestamp_ns)
        )


def _seconds(nanoseconds: int | None) -> int | None:
    return None if nanoseconds is None else nanoseconds // _SECOND_NS


@dataclass(frozen=True)
class _ProcessCounts:
    processes: int = 0
    threads: int = 0
    file_descriptors: int = 0
    sockets: int = 0


def _process_counts(pids: Sequence[int]) -> _ProcessCounts:
    threads = fds = sockets = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error, OSError):
            process = psutil.Process(pid)
            threads += process.num_threads()
            fd_dir = f"/proc/{pid}/fd"
            for fd in os.listdir(fd_dir):
                fds += 1
                with contextlib.suppress(OSError):
                    sockets += os.readlink(f"{fd_dir}/{fd}").startswith("socket:")
    return _ProcessCounts(len(pids), threads, fds, sockets)


def container_metrics(sandbox: Sandbox, container: Container) -> ContainerMetricsInfo:
    """The metrics of one running container's VM; none for a container without a running VM."""
    cgroup = container.cgroup
    if container.status.state != ContainerState.RUNNING or cgroup is None:
        return ContainerMetricsInfo(container.id, ())
    try:
        counters = cgroup.counters()
        pids = cgroup.pids()
    except QmprtError:
        return ContainerMetricsInfo(container.id, ())
    metadata = sandbox.spec.metadata
    samples = _Samples(
        (container.spec.metadata.name, container.id, container.spec.image, metadata.namespace, metadata.name),
        time.time_ns(),
    )
    _cgroup_samples(samples, counters)
    processes = _process_counts(pids)
    samples.add("container_processes", processes.processes)
    samples.add("container_threads", processes.threads)
    samples.add("container_threads_max", counters.pids_max)
    samples.add("container_file_descriptors", processes.file_descriptors)
    samples.add("container_sockets", processes.sockets)
    _filesystem_samples(samples, container)
    _spec_samples(samples, container)
    samples.add("container_start_time_seconds", _seconds(container.status.started_at_ns))
    samples.add("container_last_seen", _seconds(samples.timestamp_ns))
    return ContainerMetricsInfo(container.id, tuple(samples.samples))


def _cgroup_samples(samples: _Samples, counters: CgroupCounters) -> None:
    samples.add("container_cpu_usage_seconds_total", _seconds(counters.cpu_usage_ns))
    samples.add("container_cpu_user_seconds_total", _seconds(counters.cpu_user_ns))
    samples.add("container_cpu_system_seconds_total", _seconds(counters.cpu_system_ns))
    samples.add("container_cpu_cfs_periods_total", counters.cpu_periods)
    samples.add("container_cpu_cfs_throttled_periods_total", counters.cpu_throttled_periods)
    samples.add("container_cpu_cfs_throttled_seconds_total", _seconds(counters.cpu_throttled_ns))
    samples.add("container_memory_usage_bytes", counters.memory_usage_bytes)
    samples.add("container_memory_working_set_bytes", counters.memory_working_set_bytes)
    samples.add("container_memory_max_usage_bytes", counters.memory_max_usage_bytes)
    samples.add("container_memory_cache", counters.memory_cache_bytes)
    samples.add("container_memory_rss", counters.memory_rss_bytes)
    samples.add("container_memory_mapped_file", counters.memory_mapped_file_bytes)
    samples.add("container_memory_swap", counters.memory_swap_bytes if counters.memory_swap_bytes is not None else 0)
    samples.add("container_memory_kernel_usage", counters.memory_kernel_bytes)
    samples.add("container_memory_failcnt", counters.memory_failcnt)
    samples.add("container_memory_failures_total", counters.memory_pgfault, "pgfault", "container")
    samples.add("container_memory_failures_total", counters.memory_pgmajfault, "pgmajfault", "container")
    samples.add("container_oom_events_total", counters.oom_kills)
    for device in counters.io:
        name, major, minor = f"{device.major}:{device.minor}", str(device.major), str(device.minor)
        samples.add("container_blkio_device_usage_total", device.read_bytes, name, major, minor, "Read")
        samples.add("container_blkio_device_usage_total", device.write_bytes, name, major, minor, "Write")
        samples.add("container_fs_reads_bytes_total", device.read_bytes, name)
        samples.add("container_fs_reads_total", device.reads, name)
        samples.add("container_fs_writes_bytes_total", device.write_bytes, name)
        samples.add("container_fs_writes_total", device.writes, name)


def _filesystem_samples(samples: _Samples, container: Container) -> None:
    device = mountpoint_of(container.directory)
    used, _ = disk_usage(container.directory)
    samples.add("container_fs_usage_bytes", used, device)
    with contextlib.suppress(OSError):
        filesystem = os.statvfs(container.directory)
        samples.add("container_fs_limit_bytes", filesystem.f_blocks * filesystem.f_frsize, device)
        samples.add("container_fs_inodes_total", filesystem.f_files, device)
        samples.add("container_fs_inodes_free", filesystem.f_ffree, device)


def _spec_samples(samples: _Samples, container: Container) -> None:
    resources = container.spec.resources
    samples.add("container_spec_cpu_period", resources.cpu_period if resources else 0)
    samples.add("container_spec_cpu_quota", resources.cpu_quota if resources and resources.cpu_quota > 0 else 0)
    samples.add("container_spec_cpu_shares", resources.cpu_shares if resources else 0)
    samples.add("container_spec_memory_limit_bytes", container.record.cgroup_memory_bytes or 0)
    samples.add("container_spec_memory_swap_limit_bytes", resources.memory_swap_limit_in_bytes if resources else 0)
    samples.add("container_spec_memory_reservation_limit_bytes", 0)


_NETWORK_FIELDS: tuple[tuple[str, Callable[[InterfaceCounters], int]], ...] = (
    ("container_network_receive_bytes_total", lambda c: c.rx_bytes),
    ("container_network_receive_packets_total", lambda c: c.rx_packets),
    ("container_network_receive_errors_total", lambda c: c.rx_errors),
    ("container_network_receive_packets_dropped_total", lambda c: c.rx_dropped),
    ("container_network_transmit_bytes_total", lambda c: c.tx_bytes),
    ("container_network_transmit_packets_total", lambda c: c.tx_packets),
    ("container_network_transmit_errors_total", lambda c: c.tx_errors),
    ("container_network_transmit_packets_dropped_total", lambda c: c.tx_dropped),
)


def _network_samples(sandbox: Sandbox) -> Iterator[MetricSample]:
    network = sandbox.network
    if network is None:
        return
    # tc-redirect: the CNI interface carries every frame of the guest's NIC (redirected both ways).
    # macvtap: the guest's frames pass the macvtap, not the interface under it (a macvlan of the
    # node's device, say), so its counters are the macvtap's; both are named after the pod's interface.
    devices = {(link.device if link.mode == "macvtap" else link.ifname): link.ifname for link in network.links}
    try:
        counters = interface_counters(network.netns_path, list(devices))
    except (QmprtError, OSError):
        return
    metadata = sandbox.spec.metadata
    samples = _Samples(("POD", sandbox.id, "", metadata.namespace, metadata.name), time.time_ns())
    for device, interface in counters.items():
        for name, value in _NETWORK_FIELDS:
            samples.add(name, value(interface), devices[device])
    yield from samples.samples


def sandbox_metrics(sandbox: Sandbox, containers: Sequence[Container]) -> SandboxMetricsInfo:
    """A pod's network metrics and its containers' metrics. Blocking: run it in a worker thread."""
    return SandboxMetricsInfo(
        sandbox.id,
        tuple(_network_samples(sandbox)),
        tuple(container_metrics(sandbox, container) for container in containers),
    )
