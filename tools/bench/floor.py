"""The floor: plain ``qemu-system-x86_64`` with a qmprt VM's own arguments, started by ``floor.sh``.

The argv is taken from a running qmprt VM's ``vm.json``; qmprt's fd-passed socket chardevs become
sockets QEMU creates by path, the console a plain ``file`` chardev, and the disks a fresh overlay on
the same base and the same seed ISO. Each run gets a new overlay (made before the clock starts) and
times QEMU's start to the guest's ready marker in the console file. What qmprt adds on top of this
is the runtime's own cost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from common import OutputWatch

from qmprt.image.overlay import create_overlay

SCRIPT = Path(__file__).resolve().parent / "floor.sh"


def floor_argv(argv: Sequence[str], directory: Path, console: Path, disks: dict[str, str]) -> list[str]:
    """``argv`` of a qmprt VM with plain chardevs in ``directory`` and the block nodes' files
    replaced by ``disks`` (node name → path); it stays root (no -runas/-chroot: the pod's jail is not
    the floor's directory, and dropping root costs nothing measurable)."""
    result: list[str] = []
    index = 0
    while index < len(argv):
        option = argv[index]
        if option in ("-chroot", "-runas"):  # the pod VM's jail is its own state directory: not here
            index += 2
            continue
        result.append(option)
        if option in ("-chardev", "-blockdev") and index + 1 < len(argv):
            value = argv[index + 1]
            index += 1
            if option == "-chardev":
                chardev_id = next(part[3:] for part in value.split(",") if part.startswith("id="))
                if "logfile=" in value:  # the serial console: straight to a file
                    value = f"file,id={chardev_id},path={console}"
                else:
                    value = f"socket,id={chardev_id},path={directory / (chardev_id + '.sock')},server=on,wait=off"
            else:
                node = json.loads(value)
                if node.get("node-name") in disks:
                    node["file"]["filename"] = disks[node["node-name"]]
                    value = json.dumps(node)
            result.append(value)
        index += 1
    return result


class Floor:
    """Boots of the floor VM in ``directory``, each from a new overlay on ``base``."""

    def __init__(self, directory: Path, vm_argv: Sequence[str], base: Path, seed: Path, marker: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.seed = directory / "seed.iso"
        shutil.copyfile(seed, self.seed)
        self.overlay = directory / "overlay.qcow2"
        self.console = directory / "console.log"
        self.marker = marker
        self.argv = floor_argv(vm_argv, directory, self.console, {"root": str(self.overlay), "seed": str(self.seed)})

    def one(self, timeout: float = 180) -> dict[str, float]:
        for stale in (self.overlay, self.console):
            stale.unlink(missing_ok=True)
        create_overlay(str(self.base), "qcow2", self.overlay)
        watch = OutputWatch(self.console, self.marker).start()
        script = subprocess.Popen(
            ["bash", str(SCRIPT), str(self.console), self.marker, *self.argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=self.directory,
        )
        try:
            try:
                out, errors = script.communicate(timeout=timeout)
            except BaseException as failure:
                os.killpg(script.pid, signal.SIGKILL)  # the script's own session: it and its QEMU
                script.communicate()
                if isinstance(failure, subprocess.TimeoutExpired):
                    raise TimeoutError(f"floor: no {self.marker!r} within {timeout:.0f} s") from None
                raise
            if script.returncode != 0:
                raise RuntimeError(f"floor.sh failed ({script.returncode}): {errors.strip()}")
            watch.wait(5)  # the console file stays: the watch sees what the script saw
        finally:
            watch.stop()
        start, seen = (float(value) for value in out.split())
        assert watch.first_output_ns is not None
        first_output_ms = (watch.first_output_ns / 1e9 - start) * 1000
        return {
            "first_output_ms": first_output_ms,
            "output_to_ready_ms": (seen - start) * 1000 - first_output_ms,
            "total_ms": (seen - start) * 1000,
        }
