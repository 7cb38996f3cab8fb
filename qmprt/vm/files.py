"""The files of a VM on disk, and reading their ends.

``state_dir`` survives reboots of qmprt; ``run_dir`` holds the sockets, kept short because a unix
socket path has at most 107 bytes::

    state_dir/vm.json         what was started: config and argv, written once
    state_dir/vm-status.json  pid, state, events seen, exit; replaced atomically (``qmprt.vm.status``)
    state_dir/qemu.log        QEMU's stderr
    state_dir/console.raw     every byte of the serial console (QEMU's chardev logfile)
    state_dir/console.offset  how far the console pump has copied into the CRI log
    run_dir/qmp.sock          qmprt's monitor        run_dir/qmp-shell.sock  the monitor for people
    run_dir/qga.sock          the guest agent        run_dir/console.sock    the interactive console
    run_dir/exec.sock         qmprt's exec helper (``qmprt.vm.guest_exec``)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qmprt import state
from qmprt.errors import NotFound
from qmprt.vm.config import VMConfig

METADATA_VERSION = 1
METADATA_FILE = "vm.json"
STATUS_FILE = "vm-status.json"
QEMU_LOG = "qemu.log"
CONSOLE_RAW = "console.raw"
CONSOLE_OFFSET = "console.offset"
VM_STATE_FILES = (METADATA_FILE, STATUS_FILE, QEMU_LOG, CONSOLE_RAW, CONSOLE_OFFSET)


def remove_state_files(state_dir: Path) -> None:
    """The files ``VM.start`` writes into ``state_dir`` (for a VM that exited, or never ran)."""
    for name in VM_STATE_FILES:
        (state_dir / name).unlink(missing_ok=True)


def write_metadata(state_dir: Path, config: VMConfig, run_dir: Path, argv: list[str]) -> Path:
    """Write ``vm.json`` once (it must not exist yet); returns its path."""
    path = state_dir / METADATA_FILE
    state.write_json_atomic(
        path,
        {"version": METADATA_VERSION, "config": config.to_json(), "run_dir": str(run_dir), "argv": argv},
        exclusive=True,
    )
    return path


def read_metadata(state_dir: Path) -> dict[str, Any]:
    """``vm.json`` of the VM in ``state_dir``; ``NotFound`` if there is none."""
    try:
        metadata: dict[str, Any] = state.read_json(state_dir / METADATA_FILE)
    except NotFound as err:
        raise NotFound(f"no VM in {state_dir}") from err
    return metadata


def tail_bytes(path: Path, limit: int) -> bytes:
    """The last ``limit`` bytes of ``path`` (nothing if it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read()
    except OSError:
        return b""


def tail(path: Path, limit: int = 600) -> str:
    return tail_bytes(path, limit).decode(errors="replace")
