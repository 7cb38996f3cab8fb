"""Answers put together from several downstreams: lists, Status, Version, metric descriptors.

Status: RuntimeReady and NetworkReady are the default downstream's, because kubelet marks the whole
node NotReady on them and would then evict the container pods over a VM runtime that is restarting.
Every downstream's own conditions follow as ``<name>:RuntimeReady`` / ``<name>:NetworkReady`` (false
with reason ``DownstreamUnavailable`` for one the proxy cannot reach), and the verbose info holds a
``downstreams`` document, so ``crictl info`` says which runtime is not ready and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cri_api.v1 import api_pb2 as cri

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def sandbox_matches(item: cri.PodSandbox, wanted: cri.PodSandboxFilter) -> bool:
    """The CRI's filter semantics, for items served from the last list of a downstream that is down."""
    if wanted.id and not item.id.startswith(wanted.id):
        return False
    if wanted.HasField("state") and item.state != wanted.state.state:
        return False
    return _labels_match(wanted.label_selector, item.labels)


def container_matches(item: cri.Container, wanted: cri.ContainerFilter) -> bool:
    if wanted.id and not item.id.startswith(wanted.id):
        return False
    if wanted.pod_sandbox_id and not item.pod_sandbox_id.startswith(wanted.pod_sandbox_id):
        return False
    if wanted.HasField("state") and item.state != wanted.state.state:
        return False
    return _labels_match(wanted.label_selector, item.labels)


def unfiltered(request: Any) -> bool:
    """A list request without a filter: its answer is the downstream's whole list."""
    return not request.HasField("filter") or request.filter.ByteSize() == 0


def _first_of_each(items: Iterable[Any], key: str) -> list[Any]:
    """``items`` without repeats of ``key``: what two runtimes both have is listed once."""
    merged: dict[str, Any] = {}
    for item in items:
        merged.setdefault(getattr(item, key), item)
    return list(merged.values())


def descriptors(answers: Iterable[cri.ListMetricDescriptorsResponse]) -> cri.ListMetricDescriptorsResponse:
    every = (descriptor for answer in answers for descriptor in answer.descriptors)
    return cri.ListMetricDescriptorsResponse(descriptors=_first_of_each(every, "name"))


def image_fs(answers: Iterable[cri.ImageFsInfoResponse]) -> cri.ImageFsInfoResponse:
    merged = cri.ImageFsInfoResponse()
    seen: set[tuple[str, str]] = set()
    for answer in answers:
        for field in ("image_filesystems", "container_filesystems"):
            for usage in getattr(answer, field):
                key = (field, usage.fs_id.mountpoint)
                if key not in seen:  # two runtimes on one filesystem: count it once
                    seen.add(key)
                    getattr(merged, field).append(usage)
    return merged


def images(answers: Iterable[cri.ListImagesResponse]) -> cri.ListImagesResponse:
    every = (image for answer in answers for image in answer.images)
    return cri.ListImagesResponse(images=_first_of_each(every, "id"))


def _condition(kind: str, ready: bool, reason: str = "", message: str = "") -> cri.RuntimeCondition:
    return cri.RuntimeCondition(type=kind, status=ready, reason=reason, message=message)


def status(
    default: str, answers: Mapping[str, cri.StatusResponse | Exception], verbose: bool
) -> cri.StatusResponse:
    """``answers``: downstream name → its Status, or why it could not be asked."""
    merged = cri.StatusResponse()
    own: list[cri.RuntimeCondition] = []
    report: dict[str, Any] = {}
    handlers: dict[str, cri.RuntimeHandler] = {}
    for name, answer in answers.items():
        if isinstance(answer, Exception):
            why = str(answer)
            conditions = [
                _condition(RUNTIME_READY, False, "DownstreamUnavailable", why),
                _condition(NETWORK_READY, False, "DownstreamUnavailable", why),
            ]
            report[name] = {"reachable": False, "error": why}
        else:
            conditions = list(answer.status.conditions)
            report[name] = {"reachable": True, "conditions": {c.type: c.status for c in conditions}}
            for handler in answer.runtime_handlers:
                handlers.setdefault(handler.name, handler)
        if name == default:
            merged.status.conditions.extend(conditions)
        own.extend(_condition(f"{name}:{c.type}", c.status, c.reason, c.message) for c in conditions)
    merged.status.conditions.extend(own)
    merged.runtime_handlers.extend(handlers.values())
    if verbose:
        merged.info["downstreams"] = json.dumps(report, sort_keys=True)
    return merged


def version(own: str, answers: Mapping[str, cri.VersionResponse | Exception]) -> cri.VersionResponse:
    parts = []
    for name, answer in answers.items():
        if isinstance(answer, Exception):
            parts.append(f"{name}=unavailable")
        else:
            parts.append(f"{name}={answer.runtime_name} {answer.runtime_version}")
    return cri.VersionResponse(
        version="0.1.0", runtime_name="qmprt-proxy",
        runtime_version=f"{own} ({', '.join(parts)})", runtime_api_version="v1",
    )
