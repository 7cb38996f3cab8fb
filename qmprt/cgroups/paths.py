"""Cgroup path validation and kubelet ``cgroup_parent`` translation.

Paths handed to the drivers are relative to the hierarchy root ("kubepods/burstable/pod1/qmprt-ab"),
and are checked here so that no caller-supplied string can point outside that root.
"""

from __future__ import annotations

from typing import Literal

CgroupParentDriver = Literal["cgroupfs", "systemd"]

_SLICE_SUFFIX = ".slice"


def _check_component(component: str, whole: str) -> None:
    if component in ("", ".", ".."):
        shown = component or "an empty component"
        raise ValueError(f"invalid cgroup path {whole!r}: {shown!r} is not allowed")
    if any(ord(character) < 0x20 or character == "\x7f" for character in component):
        raise ValueError(f"invalid cgroup path {whole!r}: control characters are not allowed")


def normalize_cgroup_path(path: str) -> str:
    """``path`` without its leading slash, after checking it stays inside the hierarchy.

    Raises ``ValueError`` for the root itself (an empty path), empty, ``.`` or ``..`` components
    and control characters.
    """
    relative_path = path[1:] if path.startswith("/") else path
    if not relative_path:
        raise ValueError(f"invalid cgroup path {path!r}: the hierarchy root is not a cgroup qmprt manages")
    for component in relative_path.split("/"):
        _check_component(component, path)
    return relative_path


def expand_slice(slice_name: str) -> str:
    """The cgroupfs path of a systemd slice: each ``-``-separated prefix is a parent slice.

    ``kubepods-burstable-pod1.slice`` →
    ``kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice``;
    ``-.slice`` is the root slice (the empty path).
    """
    if not slice_name.endswith(_SLICE_SUFFIX) or slice_name == _SLICE_SUFFIX:
        raise ValueError(f"invalid systemd slice {slice_name!r}: must be a name ending in '.slice'")
    if "/" in slice_name:
        raise ValueError(f"invalid systemd slice {slice_name!r}: must not contain '/'")
    unit_name = slice_name[: -len(_SLICE_SUFFIX)]
    if unit_name == "-":
        return ""
    slice_directories: list[str] = []
    prefix = ""
    for component in unit_name.split("-"):
        if not component:
            raise ValueError(f"invalid systemd slice {slice_name!r}: leading, trailing or doubled '-'")
        _check_component(component, slice_name)
        slice_directories.append(f"{prefix}{component}{_SLICE_SUFFIX}")
        prefix = f"{prefix}{component}-"
    return "/".join(slice_directories)


def parent_to_path(cgroup_parent: str, driver: CgroupParentDriver) -> str:
    """Translate kubelet's ``cgroup_parent`` into a path relative to the hierarchy root.

    cgroupfs: ``/kubepods/burstable/pod<uid>`` → ``kubepods/burstable/pod<uid>``.
    systemd: ``kubepods-burstable-pod<uid>.slice`` →
    ``kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice``.
    Raises ``ValueError`` when the parent is empty or could escape the hierarchy.
    """
    if not cgroup_parent:
        raise ValueError("empty cgroup_parent: kubelet gave no parent cgroup")
    if driver == "cgroupfs":
        return normalize_cgroup_path(cgroup_parent)
    if driver == "systemd":
        slice_path = expand_slice(cgroup_parent)
        if not slice_path:
            raise ValueError(f"invalid cgroup_parent {cgroup_parent!r}: the root slice is not a pod parent")
        return slice_path
    raise ValueError(f"unknown cgroup driver {driver!r}: expected 'cgroupfs' or 'systemd'")
