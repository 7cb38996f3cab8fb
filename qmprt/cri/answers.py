"""The pod layer's dataclasses → the protobuf messages of CRI answers: statuses, lists, stats, metrics.

Maps (labels, annotations) are copied key by key, as ``qmprt.cri.convert`` takes them in, so they
round-trip byte for byte; states go through ``convert.cri_state``, the one mapping of them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt.cri.convert import RESOURCE_SCALARS, cri_state
from qmprt.image import ImageRecord
from qmprt.pod.metrics import DESCRIPTORS, MetricSample, SandboxMetricsInfo
from qmprt.pod.specs import ContainerMetadata, Resources, SandboxMetadata
from qmprt.pod.views import ContainerInfo, ContainerStatsInfo, SandboxInfo, SandboxStatsInfo

# -- objects and their statuses -------------------------------------------------------------------


def linux_resources(value: Resources) -> cri.LinuxContainerResources:
    return cri.LinuxContainerResources(
        **{name: getattr(value, name) for name in RESOURCE_SCALARS},
        hugepage_limits=[cri.HugepageLimit(page_size=size, limit=limit) for size, limit in value.hugepage_limits],
        unified=dict(value.unified),
    )


def sandbox_metadata(metadata: SandboxMetadata) -> cri.PodSandboxMetadata:
    return cri.PodSandboxMetadata(
        name=metadata.name, uid=metadata.uid, namespace=metadata.namespace, attempt=metadata.attempt
    )


def container_metadata(metadata: ContainerMetadata) -> cri.ContainerMetadata:
    return cri.ContainerMetadata(name=metadata.name, attempt=metadata.attempt)


def pod_sandbox(info: SandboxInfo) -> cri.PodSandbox:
    return cri.PodSandbox(
        id=info.id,
        metadata=sandbox_metadata(info.spec.metadata),
        state=cri_state(info.status.state),
        created_at=info.status.created_at_ns,
        labels=dict(info.spec.labels),
        annotations=dict(info.spec.annotations),
        runtime_handler=info.spec.runtime_handler,
    )


def pod_sandbox_status(info: SandboxInfo) -> cri.PodSandboxStatus:
    status = info.status
    return cri.PodSandboxStatus(
        id=info.id,
        metadata=sandbox_metadata(info.spec.metadata),
        state=cri_state(status.state),
        created_at=status.created_at_ns,
        network=cri.PodSandboxNetworkStatus(
            ip=status.ip, additional_ips=[cri.PodIP(ip=ip) for ip in status.additional_ips]
        ),
        linux=cri.LinuxPodSandboxStatus(
            namespaces=cri.Namespace(
                options=cri.NamespaceOption(network=cri.POD, pid=cri.POD, ipc=cri.POD)
            )
        ),
        labels=dict(info.spec.labels),
        annotations=dict(info.spec.annotations),
        runtime_handler=info.spec.runtime_handler,
    )


def container(info: ContainerInfo) -> cri.Container:
    return cri.Container(
        id=info.id,
        pod_sandbox_id=info.sandbox_id,
        metadata=container_metadata(info.spec.metadata),
        image=cri.ImageSpec(image=info.spec.image),
        image_ref=info.image_ref,
        image_id=info.image_ref,
        state=cri_state(info.status.state),
        created_at=info.status.created_at_ns,
        labels=dict(info.spec.labels),
        annotations=dict(info.spec.annotations),
    )


def container_status(info: ContainerInfo) -> cri.ContainerStatus:
    spec, status = info.spec, info.status
    return cri.ContainerStatus(
        id=info.id,
        metadata=container_metadata(spec.metadata),
        state=cri_state(status.state),
        created_at=status.created_at_ns,
        started_at=status.started_at_ns,
        finished_at=status.finished_at_ns,
        exit_code=status.exit_code,
        image=cri.ImageSpec(image=spec.image),
        image_ref=info.image_ref,
        image_id=info.image_ref,
        reason=status.reason,
        message=status.message,
        labels=dict(spec.labels),
        annotations=dict(spec.annotations),
        mounts=[
            cri.Mount(
                container_path=m.container_path, host_path=m.host_path, readonly=m.readonly,
                propagation=cri.MountPropagation.Value(m.propagation),
            )
            for m in spec.mounts
        ],
        log_path=info.log_path,
        resources=cri.ContainerResources(linux=linux_resources(spec.resources)) if spec.resources else None,
    )


def verbose_info(document: Mapping[str, Any]) -> dict[str, str]:
    """The ``info`` map of a verbose status answer: one JSON document under "info", as containerd does."""
    return {"info": json.dumps(document, default=_json_default, sort_keys=True)}


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)


# -- stats and images -----------------------------------------------------------------------------


def _uint(value: int | None) -> cri.UInt64Value | None:
    return None if value is None else cri.UInt64Value(value=max(0, value))


def filesystem_usage(timestamp_ns: int, mountpoint: str, used_bytes: int, inodes_used: int) -> cri.FilesystemUsage:
    return cri.FilesystemUsage(
        timestamp=timestamp_ns,
        fs_id=cri.FilesystemIdentifier(mountpoint=mountpoint),
        used_bytes=cri.UInt64Value(value=max(0, used_bytes)),
        inodes_used=cri.UInt64Value(value=max(0, inodes_used)),
    )


def _cpu(timestamp_ns: int, usage_ns: int | None) -> cri.CpuUsage:
    return cri.CpuUsage(timestamp=timestamp_ns, usage_core_nano_seconds=_uint(usage_ns))


def _memory(timestamp_ns: int, working_set: int | None, usage: int | None, rss: int | None) -> cri.MemoryUsage:
    return cri.MemoryUsage(
        timestamp=timestamp_ns,
        working_set_bytes=_uint(working_set),
        usage_bytes=_uint(usage),
        rss_bytes=_uint(rss),
    )


def container_stats(info: ContainerStatsInfo) -> cri.ContainerStats:
    return cri.ContainerStats(
        attributes=cri.ContainerAttributes(
            id=info.container_id,
            metadata=container_metadata(info.spec.metadata),
            labels=dict(info.spec.labels),
            annotations=dict(info.spec.annotations),
        ),
        cpu=_cpu(info.timestamp_ns, info.cpu_usage_ns),
        memory=_memory(
            info.timestamp_ns, info.memory_working_set_bytes, info.memory_usage_bytes, info.memory_rss_bytes
        ),
        writable_layer=filesystem_usage(
            info.timestamp_ns,
            info.writable_layer_mountpoint,
            info.writable_layer_bytes,
            info.writable_layer_inodes,
        ),
    )


def pod_sandbox_stats(info: SandboxStatsInfo) -> cri.PodSandboxStats:
    return cri.PodSandboxStats(
        attributes=cri.PodSandboxAttributes(
            id=info.sandbox_id,
            metadata=sandbox_metadata(info.spec.metadata),
            labels=dict(info.spec.labels),
            annotations=dict(info.spec.annotations),
        ),
        linux=cri.LinuxPodSandboxStats(
            cpu=_cpu(info.timestamp_ns, info.cpu_usage_ns),
            memory=_memory(
                info.timestamp_ns, info.memory_working_set_bytes, info.memory_usage_bytes, info.memory_rss_bytes
            ),
            containers=[container_stats(container) for container in info.containers],
        ),
    )


def image(record: ImageRecord) -> cri.Image:
    """Repo tags are the names without a digest (and URL names). Repo digests are the names by digest
    (a registry pull stores ``host/repo@sha256:<manifest>``, the manifest's digest as containerd shows
    it), and for a repository without one (a URL or rule pull) its name at the content's own digest."""
    tags, repo_digests, repositories = [], [], set()
    for name in record.names:
        base, at, digest = name.rpartition("@") if "@" in name and "://" not in name else (name, "", "")
        if not at:
            tags.append(name)
            continue
        repositories.add(_repository(base))
        repo_digests.append(f"{_repository(base)}@{digest}")
    for name in tags:
        if _repository(name) not in repositories:
            repositories.add(_repository(name))
            repo_digests.append(f"{_repository(name)}@{record.digest}")
    return cri.Image(
        id=record.digest,
        repo_tags=tags,
        repo_digests=list(dict.fromkeys(repo_digests)),
        size=record.size_bytes,
        spec=cri.ImageSpec(image=record.digest),
    )


def _repository(name: str) -> str:
    """``registry/repo:tag`` → ``registry/repo``; names without a tag (URLs, bare names) stay whole."""
    head, _, tail = name.rpartition("/")
    if ":" in tail and "://" not in name:
        return f"{head}/{tail.split(':', 1)[0]}" if head else tail.split(":", 1)[0]
    return name


# -- metrics (cAdvisor-style, for kubelet's CRI-only stats) ----------------------------------------

_METRIC_TYPES = {"counter": cri.COUNTER, "gauge": cri.GAUGE}


def metric_descriptors() -> list[cri.MetricDescriptor]:
    return [
        cri.MetricDescriptor(name=d.name, help=d.help, label_keys=list(d.label_keys)) for d in DESCRIPTORS
    ]


def _metrics(samples: Sequence[MetricSample]) -> list[cri.Metric]:
    return [
        cri.Metric(
            name=sample.name,
            timestamp=sample.timestamp_ns,
            metric_type=_METRIC_TYPES[sample.kind],
            label_values=list(sample.label_values),
            value=cri.UInt64Value(value=sample.value),
        )
        for sample in samples
    ]


def pod_sandbox_metrics(info: SandboxMetricsInfo) -> cri.PodSandboxMetrics:
    return cri.PodSandboxMetrics(
        pod_sandbox_id=info.sandbox_id,
        metrics=_metrics(info.samples),
        container_metrics=[
            cri.ContainerMetrics(container_id=container.container_id, metrics=_metrics(container.samples))
            for container in info.containers
        ],
    )
