"""Stopping a VM in stages: ``system_powerdown`` within the grace period, then QMP ``quit``, then SIGKILL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from qmprt.errors import ShutdownError, Unavailable, VMError
from qmprt.vm.config import ShutdownStep
from qmprt.vm.monitor import Monitor
from qmprt.vm.status import StatusRecord

log = logging.getLogger(__name__)

POWERDOWN_REPEAT_SECONDS = 2.0  # between presses of the power button during a stop's grace period
SHUTDOWN_COMMAND_SECONDS = 2.0  # a monitor command of a stop step that gets no answer is given up
QUIT_WAIT_SECONDS = 5.0
KILL_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class StagedStop:
    """One stop of VM ``vm_id``: each step is recorded in ``status``; ``exited`` is set once QEMU has
    gone; ``monitor`` gives the VM's monitor at the time of each step; ``kill`` SIGKILLs QEMU."""

    vm_id: str
    status: StatusRecord
    exited: asyncio.Event
    monitor: Callable[[], Monitor | None]
    kill: Callable[[], None]

    async def run(self, grace: float, allow: ShutdownStep) -> ShutdownStep:
        """The step that ended the VM; ``ShutdownError`` when it needed a step past ``allow``."""
        steps: list[tuple[ShutdownStep, float]] = []
        if grace > 0:
            steps.append((ShutdownStep.POWERDOWN, grace))
        steps += [(ShutdownStep.QUIT, QUIT_WAIT_SECONDS), (ShutdownStep.KILL, KILL_WAIT_SECONDS)]
        for step, wait in steps:
            if step > allow:
                raise ShutdownError(f"VM {self.vm_id} did not stop with {ShutdownStep(allow).name}", step.name)
            self.status.record_step(step)
            if await self._step_and_wait(step, wait):
                return step
            log.warning("VM %s still running %.1f s after %s", self.vm_id, wait, step.name)
        raise ShutdownError(f"VM {self.vm_id} survived SIGKILL", ShutdownStep.KILL.name)

    async def _step_and_wait(self, step: ShutdownStep, wait: float) -> bool:
        """Take ``step``, then wait up to ``wait`` s for the exit. The power button is pressed again
        every ``POWERDOWN_REPEAT_SECONDS``: a press before the guest's ACPI handler runs (a VM still
        booting) is lost, and a guest that is shutting down ignores the next one."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            await self._take(step)
            remaining = deadline - asyncio.get_running_loop().time()
            pause = min(remaining, POWERDOWN_REPEAT_SECONDS) if step == ShutdownStep.POWERDOWN else remaining
            try:
                await asyncio.wait_for(asyncio.shield(self.exited.wait()), max(pause, 0))
                return True
            except asyncio.TimeoutError:
                if pause >= remaining:
                    return False

    async def _take(self, step: ShutdownStep) -> None:
        monitor = self.monitor()
        try:
            # A frozen QEMU never answers: each command gets a deadline so the stop moves on.
            if step == ShutdownStep.POWERDOWN and monitor is not None:
                await asyncio.wait_for(monitor.execute("system_powerdown"), SHUTDOWN_COMMAND_SECONDS)
            elif step == ShutdownStep.QUIT and monitor is not None:
                await asyncio.wait_for(monitor.execute("quit"), SHUTDOWN_COMMAND_SECONDS)
            elif step == ShutdownStep.KILL:
                self.kill()
        except (Unavailable, VMError, asyncio.TimeoutError) as err:
            log.info("VM %s: %s: %s", self.vm_id, step.name, err or "no answer from the monitor")
