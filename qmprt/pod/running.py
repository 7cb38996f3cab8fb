"""What is done to a running container: exec in its guest, reopen its log (resources: ``qmprt.pod.resources``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from qmprt.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from qmprt.pod.live import Container
from qmprt.pod.states import ContainerState
from qmprt.vm.agent import ExecResult
from qmprt.vm.config import VMState
from qmprt.vm.guest_exec import START_TIMEOUT, ExecChannel
from qmprt.vm.machine import VM

# What the agent path keeps of each stream (qemu-ga's own bound): the helper path keeps the same.
EXEC_OUTPUT_LIMIT = 16 << 20


# A guest still booting has not started its exec helper yet: until its VM is this old, an exec waits
# for the helper (a cloud image starts it late, from cloud-init) before it goes to the guest agent.
BOOT_GRACE_S = 60.0
HELPER_PROBE_S = 2.0


async def helper_ready(vm: VM, limit: float | None = None) -> bool:
    """Whether ``vm``'s exec helper answers: at once when it already did; else waiting while the guest
    may still be starting it (``BOOT_GRACE_S`` after the VM started, at most ``limit`` seconds)."""
    uptime = time.time() - vm.status.started_at_ns / 1e9
    patience = max(HELPER_PROBE_S, BOOT_GRACE_S - uptime)
    deadline = time.monotonic() + (min(patience, limit) if limit else patience)
    while True:
        if await vm.guest_exec.available(max(0.1, min(HELPER_PROBE_S, deadline - time.monotonic()))):
            return True
        if time.monotonic() >= deadline or vm.status.state != VMState.RUNNING:
            return False
        await asyncio.sleep(0.2)


def running_vm(container: Container) -> VM:
    if container.status.state != ContainerState.RUNNING or container.vm is None:
        raise FailedPrecondition(f"container {container.id[:12]} is not running")
    return container.vm


async def exec_sync(container: Container, argv: Sequence[str], timeout_s: int) -> ExecResult:
    """Run ``argv`` (not empty) in the guest; a QEMU that dies meanwhile says the container stopped."""
    vm = running_vm(container)
    timeout = float(timeout_s) if timeout_s > 0 else None
    try:
        if await helper_ready(vm, timeout):
            return await exec_through_helper(vm.guest_exec, argv, timeout)
        return await vm.agent.exec(list(argv), timeout=timeout)
    except (Unavailable, FailedPrecondition) as err:
        with contextlib.suppress(asyncio.TimeoutError):
            await vm.wait_exit(1.0)  # a channel reset because QEMU died: let its exit be seen
        if vm.status.state in (VMState.EXITED, VMState.STOPPING):
            raise FailedPrecondition(
                f"container {container.id[:12]} stopped while the command ran: {vm.status.message or err}"
            ) from err
        raise


async def exec_through_helper(channel: ExecChannel, argv: Sequence[str], timeout: float | None) -> ExecResult:
    """Run ``argv`` through the exec helper, keeping at most EXEC_OUTPUT_LIMIT bytes of each stream
    (the rest is read and dropped, so the process never blocks); past ``timeout`` it is killed."""
    try:
        process = await asyncio.wait_for(channel.spawn(list(argv)), timeout or START_TIMEOUT)
    except asyncio.TimeoutError as err:
        # The helper never took the command (a frozen guest): not a command that ran too long.
        raise FailedPrecondition(f"the exec helper does not answer: {argv[0]!r} did not start in the guest") from err
    kept = {"stdout": bytearray(), "stderr": bytearray()}
    truncated = False

    async def collect() -> int:
        nonlocal truncated
        while (item := await process.read()) is not None:
            stream, data = item
            room = EXEC_OUTPUT_LIMIT - len(kept[stream])
            truncated = truncated or len(data) > room
            kept[stream] += data[: max(room, 0)]
        return await process.wait()

    try:
        exit_code = await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError as err:
        raise DeadlineExceeded(f"command {argv[0]!r} still running in the guest after {timeout} s: killed") from err
    finally:
        await process.kill()
    return ExecResult(exit_code=exit_code, stdout=bytes(kept["stdout"]), stderr=bytes(kept["stderr"]),
                      truncated=truncated)


def reopen_log(container: Container) -> None:
    running_vm(container)
    if container.log_writer is None:
        raise FailedPrecondition(f"container {container.id[:12]} has no log file")
    try:
        container.log_writer.reopen()
    except OSError as err:
        raise FailedPrecondition(f"cannot reopen the log file {container.record.log_path}: {err}") from err

