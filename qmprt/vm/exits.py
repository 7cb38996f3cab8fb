"""From what qmprt saw of an emulator's end to a container's exit code, reason and message."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Any

from qmprt.vm.config import ShutdownStep


@dataclass(frozen=True)
class ExitVerdict:
    exit_code: int
    reason: str  # the CRI reason: Completed, Error, OOMKilled
    message: str


def classify_exit(
    *,
    returncode: int | None,
    shutdown_reason: str | None,
    shutdown_by_guest: bool,
    panicked: bool,
    oom_kills: int,
    stop_requested: bool,
    shutdown_step: int,
    stderr_tail: str = "",
    console_tail: bytes = b"",
    exit_status_marker: str = "",
) -> ExitVerdict:
    """Turn what qmprt saw of an emulator's end into a container exit code, reason and message.

    With ``exit_status_marker`` a guest power-off takes its exit code from the console
    (``reported_status``): the container's command ended with that status and powered the guest off.
    """
    tail = f": {stderr_tail.strip()}" if stderr_tail.strip() else ""
    if oom_kills > 0:
        return ExitVerdict(137, "OOMKilled", "the VM's cgroup reached its memory limit and QEMU was killed")
    if panicked:
        return ExitVerdict(1, "Error", "the guest kernel panicked (reported through pvpanic)")
    if shutdown_reason == "guest-shutdown" or (shutdown_by_guest and shutdown_reason != "guest-panic"):
        status = reported_status(console_tail, exit_status_marker) if exit_status_marker else None
        if status is not None:
            return ExitVerdict(
                status, "Completed" if status == 0 else "Error",
                f"the container's command exited with status {status}; the guest powered off",
            )
        return ExitVerdict(0, "Completed", "the guest powered off")
    if stop_requested:
        if shutdown_step <= ShutdownStep.POWERDOWN:
            return ExitVerdict(0, "Completed", "stopped: the guest powered off on request")
        how = "QMP quit" if shutdown_step == ShutdownStep.QUIT else "SIGKILL"
        return ExitVerdict(137, "Error", f"stopped: the guest did not power off in time, ended by {how}")
    if shutdown_reason == "host-signal":
        return ExitVerdict(143, "Error", f"QEMU was stopped by a signal from outside qmprt{tail}")
    if shutdown_reason is not None and shutdown_reason.startswith("host-qmp"):
        return ExitVerdict(0, "Completed", f"stopped through the monitor ({shutdown_reason})")
    if returncode is None:
        return ExitVerdict(255, "Error", f"QEMU exited while qmprt was not watching it{tail}")
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        return ExitVerdict(128 - returncode, "Error", f"QEMU was killed by {name}{tail}")
    if returncode == 0:
        return ExitVerdict(0, "Completed", "QEMU exited")
    return ExitVerdict(returncode, "Error", f"QEMU exited with status {returncode}{tail}")


def reported_status(console_tail: bytes, marker: str) -> int | None:
    """The status after the last line of ``console_tail`` that starts with ``marker`` (0-255), else None."""
    found = re.findall(rb"^" + re.escape(marker.encode()) + rb"([0-9]{1,3})\r?$", console_tail, re.MULTILINE)
    if not found:
        return None
    status = int(found[-1])
    return status if status <= 255 else None


def infer_unwatched_exit(console_tail: bytes, qemu_log_tail: str) -> dict[str, Any]:
    """What the guest's console and QEMU's stderr say about an exit nobody watched over QMP.

    The guest kernel prints ``reboot: Power down`` when it powers off and ``Kernel panic`` when it
    panics; QEMU logs ``terminating on signal`` when a signal ends it. Returns the status fields the
    evidence supports (empty when there is none).
    """
    panic_at = console_tail.rfind(b"Kernel panic - not syncing")
    poweroff_at = console_tail.rfind(b"reboot: Power down")
    if panic_at >= 0 and panic_at > poweroff_at:
        return {"panicked": True, "shutdown_reason": "guest-panic"}
    if poweroff_at >= 0:
        return {"shutdown_reason": "guest-shutdown", "shutdown_by_guest": True}
    if "terminating on signal" in qemu_log_tail:
        return {"shutdown_reason": "host-signal"}
    return {}
