"""``vm-status.json``: what qmprt records about one VM while it runs.

``StatusRecord`` is its only writer: state changes (checked against ``allowed_transition``), the QEMU
it spawned (pid and start time, to know it again after a restart), the monitor's events (shutdown
reason, panic, pause), the steps of a stop and, for a QEMU that died unwatched, what its files tell.
Each change is on disk before it is in memory (``state.StatusFile``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qmprt import state
from qmprt.errors import FailedPrecondition, NotFound
from qmprt.vm.config import ShutdownStep, VMState, VMStatus, allowed_transition
from qmprt.vm.files import STATUS_FILE
from qmprt.vm.monitor import Monitor, MonitorEvent

log = logging.getLogger(__name__)


def started_for_sure(state_dir: Path) -> bool:
    """Whether a VM start in ``state_dir`` got as far as recording its QEMU's pid; a start cut before
    that (vm.json without a status, or a status without a pid) may or may not have spawned QEMU."""
    try:
        status = state.read_json(state_dir / STATUS_FILE)
    except (NotFound, ValueError):
        return False
    return isinstance(status, dict) and status.get("pid") is not None


class StatusRecord:
    """The status of VM ``vm_id``, kept in ``file``. Create with ``fresh`` or ``load``."""

    def __init__(self, file: state.StatusFile[VMStatus], vm_id: str) -> None:
        self._file = file
        self.vm_id = vm_id

    @classmethod
    def fresh(cls, state_dir: Path, vm_id: str) -> StatusRecord:
        """A new status, not written yet (``write`` does, once the start is recorded in vm.json)."""
        return cls(state.StatusFile(state_dir / STATUS_FILE, VMStatus(), VMStatus.to_json, VMStatus.from_json), vm_id)

    @classmethod
    def load(cls, state_dir: Path, vm_id: str) -> StatusRecord:
        return cls(state.StatusFile.load(state_dir / STATUS_FILE, VMStatus.to_json, VMStatus.from_json), vm_id)

    @property
    def value(self) -> VMStatus:
        return self._file.value

    @property
    def path(self) -> Path:
        return self._file.path

    def _update(self, change: Callable[[VMStatus], VMStatus]) -> None:
        self._file.update(change)

    def write(self) -> None:
        """Write the status as it is."""
        self._update(lambda status: status)

    def transition(self, new_state: VMState, **changes: Any) -> None:
        def change(status: VMStatus) -> VMStatus:
            if not allowed_transition(status.state, new_state):
                raise FailedPrecondition(f"VM {self.vm_id}: {status.state.value} cannot become {new_state.value}")
            return dataclasses.replace(status, state=new_state, **changes)

        self._update(change)

    def record_spawn(self, pid: int, create_time: float | None) -> None:
        """QEMU runs as ``pid``, created at ``create_time`` (psutil's, None if unknown); started now."""
        started_at = time.time_ns()
        self._update(
            lambda s: dataclasses.replace(s, pid=pid, pid_create_time=create_time, started_at_ns=started_at)
        )

    def record_step(self, step: ShutdownStep) -> None:
        self._update(lambda status: dataclasses.replace(status, shutdown_step=int(step)))

    def record_evidence(self, evidence: dict[str, Any]) -> None:
        """What ``infer_unwatched_exit`` found of a QEMU that exited while nobody watched."""
        self._update(lambda status: dataclasses.replace(status, **evidence))

    def record_event(self, event: MonitorEvent) -> None:
        log.info("VM %s: %s %s", self.vm_id, event.name, dict(event.data))
        if event.name == "SHUTDOWN":
            self._update(
                lambda s: dataclasses.replace(
                    s, shutdown_reason=str(event.data.get("reason")), shutdown_by_guest=bool(event.data.get("guest"))
                )
            )
        elif event.name == "GUEST_PANICKED":
            self._update(lambda s: dataclasses.replace(s, panicked=True))
        elif event.name in ("STOP", "RESUME"):
            paused = event.name == "STOP"
            self._update(lambda s: dataclasses.replace(s, paused=paused))

    async def follow(self, monitor: Monitor, also: Callable[[MonitorEvent], None] | None = None) -> None:
        """Record ``monitor``'s events until its stream ends (QEMU went away) or this is cancelled;
        ``also`` sees each after it is recorded."""
        try:
            async for event in monitor.events():
                self.record_event(event)
                if also is not None:
                    also(event)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the stream ends when QEMU goes away
            log.debug("VM %s event stream ended: %r", self.vm_id, err)
