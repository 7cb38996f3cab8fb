"""Finding a VM's files from what a person types: a directory, a VM id, or a unique id prefix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qmprt.errors import InvalidArgument, NotFound


@dataclass(frozen=True)
class VMFiles:
    vm_id: str
    state_dir: Path
    run_dir: Path

    @property
    def qmp_shell_socket(self) -> Path:
        return self.run_dir / "qmp-shell.sock"

    @property
    def console_socket(self) -> Path:
        return self.run_dir / "console.sock"


def _read(vm_json: Path) -> VMFiles:
    document = json.loads(vm_json.read_text())
    return VMFiles(document["config"]["vm_id"], vm_json.parent, Path(document["run_dir"]))


def all_vms(state_root: str | Path) -> list[VMFiles]:
    return [_read(path) for path in sorted(Path(state_root).rglob("vm.json"))]


def locate(target: str, state_root: str | Path) -> VMFiles:
    """``target`` is a VM state directory, a VM id, or an unambiguous prefix of one."""
    candidate = Path(target)
    if (candidate / "vm.json").is_file():
        return _read(candidate / "vm.json")
    vms = all_vms(state_root)
    exact = [vm for vm in vms if vm.vm_id == target]
    if exact:
        return exact[0]
    matches = [vm for vm in vms if vm.vm_id.startswith(target)]
    if not matches:
        raise NotFound(f"no VM {target!r} under {state_root}")
    if len(matches) > 1:
        names = ", ".join(vm.vm_id for vm in matches[:5])
        raise InvalidArgument(f"{target!r} is ambiguous: {names}")
    return matches[0]
