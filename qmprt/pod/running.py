"""What is done to a running container: exec in its guest, reopen its log (resources: ``qmprt.pod.resources``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from qmprt.errors import FailedPrecondition, Unavailable
from qmprt.pod.live import Container
from qmprt.pod.states import ContainerState
from qmprt.vm.agent import ExecResult
from qmprt.vm.config import VMState
from qmprt.vm.machine import VM


def running_vm(container: Container) -> VM:
    if container.status.state != ContainerState.RUNNING or container.vm is None:
        raise FailedPrecondition(f"container {container.id[:12]} is not running")
    return container.vm


async def exec_sync(container: Container, argv: Sequence[str], timeout_s: int) -> ExecResult:
    """Run ``argv`` (not empty) in the guest; a QEMU that dies meanwhile says the container stopped."""
    vm = running_vm(container)
    try:
        return await vm.agent.exec(list(argv), timeout=float(timeout_s) if timeout_s > 0 else None)
    except (Unavailable, FailedPrecondition) as err:
        with contextlib.suppress(asyncio.TimeoutError):
            await vm.wait_exit(1.0)  # a channel reset because QEMU died: let its exit be seen
        if vm.status.state in (VMState.EXITED, VMState.STOPPING):
            raise FailedPrecondition(
                f"container {container.id[:12]} stopped while the command ran: {vm.status.message or err}"
            ) from err
        raise


def reopen_log(container: Container) -> None:
    running_vm(container)
    if container.log_writer is None:
        raise FailedPrecondition(f"container {container.id[:12]} has no log file")
    try:
        container.log_writer.reopen()
    except OSError as err:
        raise FailedPrecondition(f"cannot reopen the log file {container.record.log_path}: {err}") from err

