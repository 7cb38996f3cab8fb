"""What ``qmprt qmp TARGET`` and ``qmprt console TARGET`` mean: a pod (by name, namespace/name or
sandbox id prefix) stands for its live VM; anything else is looked up as a VM (container id,
prefix or state directory). Reads the state files only, so it works without a running server."""

from __future__ import annotations

import json
from pathlib import Path

from qmprt.errors import FailedPrecondition, InvalidArgument, NotFound
from qmprt.vm.locate import VMFiles, locate


def _pods(state_root: Path) -> list[tuple[str, str, str, Path]]:
    found = []
    for sandbox_file in sorted((state_root / "pods").glob("*/sandbox.json")):
        metadata = json.loads(sandbox_file.read_text())["metadata"]
        found.append((sandbox_file.parent.name, metadata["name"], metadata["namespace"], sandbox_file.parent))
    return found


def _live_vm(pod_dir: Path) -> VMFiles:
    candidates = []
    for status_file in pod_dir.glob("*/vm-status.json"):
        status = json.loads(status_file.read_text())
        candidates.append((status.get("state") == "running", status.get("started_at_ns", 0), status_file.parent))
    if not candidates:
        raise FailedPrecondition(f"pod {pod_dir.name[:12]} has no VM yet: create and start its container")
    running, _, directory = max(candidates)
    if not running:
        raise FailedPrecondition(f"the VM of pod {pod_dir.name[:12]} is not running")
    return locate(str(directory), pod_dir.parent)


def locate_pod_or_vm(target: str, state_root: str | Path) -> VMFiles:
    root = Path(state_root)
    namespace, _, name = target.rpartition("/")
    matches = [
        pod_dir
        for sandbox_id, pod_name, pod_namespace, pod_dir in _pods(root)
        if (pod_name == name and namespace in ("", pod_namespace)) or sandbox_id.startswith(target)
    ]
    if len(matches) > 1:
        raise InvalidArgument(f"{target!r} names {len(matches)} pods; use namespace/name or a sandbox id")
    if matches:
        return _live_vm(matches[0])
    try:
        return locate(target, root)
    except NotFound as err:
        raise NotFound(f"no pod or VM {target!r} under {root}") from err
