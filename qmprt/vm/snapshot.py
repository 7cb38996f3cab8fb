"""Saving a paused VM to a template and starting clones from it, over QMP migration to a file.

A template (``Snapshot(role="save")``) runs with its RAM in a shared file mapping. ``save`` pauses it and
migrates to the state file that QEMU got as an fd at start: with the ``x-ignore-shared`` capability the
stream holds the devices only (a few hundred KiB), the RAM is already in its file. A clone
(``role="restore"``) maps that RAM file private and starts with ``-incoming defer``; ``begin`` sets the
same capability and feeds it the state file, and QEMU resumes the guest where the template stopped.

The fds: qmprt opens the state file itself. A clone's QEMU inherits it at spawn under the same number,
named in ``migrate-incoming`` as ``fd:N``; a template's gets it over the QMP socket (``getfd``: outgoing
``fd:`` migration takes only a name). QEMU never opens a path itself, so a QEMU that dropped root and
sits in its chroot needs no access to the template.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from qmprt.errors import VMError
from qmprt.vm.config import ShutdownStep, Snapshot
from qmprt.vm.guest_exec import ExecChannel
from qmprt.vm.monitor import Monitor

if TYPE_CHECKING:
    from qmprt.vm.machine import VM

log = logging.getLogger(__name__)
IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
POLL_S = 0.005


def open_state(snapshot: Snapshot) -> int:
    """A clone's state file, read-only, for QEMU to inherit at spawn."""
    try:
        return os.open(snapshot.state, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise VMError(f"the template's device state {snapshot.state} is gone") from err


async def begin(monitor: Monitor, snapshot: Snapshot, fd: int, timeout: float) -> None:
    """Right after QEMU's monitor is up: the migration capability, and for a restore the incoming
    stream, until the guest runs again."""
    await monitor.execute("migrate-set-capabilities", IGNORE_SHARED)
    if snapshot.role != "restore":
        return
    await monitor.execute("migrate-incoming", {"uri": f"fd:{fd}"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await monitor.query_status()
        if status == "running":
            return
        if status == "paused" and (await monitor.execute("query-migrate")).get("status") == "completed":
            await monitor.execute("cont")  # the template was saved paused, so its clone arrives paused
            return
        if status not in ("inmigrate", "prelaunch", "restore-vm"):
            raise VMError(f"restoring the template's state ended in {status!r}; {await _migration_error(monitor)}")
        if loop.time() > deadline:
            raise VMError(f"restoring the template's state took over {timeout:.0f} s")
        await asyncio.sleep(POLL_S)


async def save(monitor: Monitor, state: str, timeout: float) -> dict[str, Any]:
    """Pause the guest and write its device state to ``state`` (created 0600, handed to QEMU as an fd:
    QEMU's outgoing ``fd:`` migration takes a ``getfd`` name); ``query-migrate``'s last answer."""
    fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        await monitor.pass_fd(fd, "template-state")
    finally:
        os.close(fd)
    await monitor.execute("stop")
    await monitor.execute("migrate", {"uri": "fd:template-state"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer: dict[str, Any] = await monitor.execute("query-migrate")
        status = answer.get("status")
        if status == "completed":
            return answer
        if status in ("failed", "cancelled"):
            raise VMError(f"saving the template failed: {answer.get('error-desc', status)}")
        if loop.time() > deadline:
            raise VMError(f"saving the template took over {timeout:.0f} s (migration {status})")
        await asyncio.sleep(POLL_S)


async def _migration_error(monitor: Monitor) -> str:
    try:
        answer = await monitor.execute("query-migrate")
    except Exception as err:  # noqa: BLE001 - only for the message
        return f"query-migrate: {err}"
    return str(answer.get("error-desc") or answer.get("status") or "no migration status")


async def take_identity(channel: ExecChannel, script: bytes, timeout: float) -> None:
    """Run a clone's identity script (``qmprt.cloudinit.template.identity_script``) with ``sh -s``
    through the exec helper; a script that fails is a VMError with its stderr."""

    async def run() -> tuple[int, bytes]:
        process = await channel.spawn(["sh", "-s"], stdin=True)
        await process.write(script)
        await process.close_stdin()
        errors = bytearray()
        while (chunk := await process.read()) is not None:
            if chunk[0] == "stderr" and len(errors) < 4096:
                errors += chunk[1]
        return await process.wait(), bytes(errors)

    began = asyncio.get_running_loop().time()
    if not await channel.available(timeout):
        log.warning("exec helper: no after %.2f s (%s)", asyncio.get_running_loop().time() - began, channel.failure)
        raise VMError(f"the clone's exec helper does not answer ({channel.failure}): it cannot take its identity")
    try:
        code, errors = await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError as err:
        raise VMError(f"the clone did not take its identity within {timeout:.0f} s") from err
    if code != 0:
        raise VMError(f"the clone's identity script failed ({code}): {errors.decode(errors='replace').strip()}")


async def finish_template(vm: VM, marker: str, timeout: float) -> dict[str, Any]:
    """A template VM (``Snapshot(role="save")``) from its start to its saved end: wait for the guest's
    ``marker`` on the console, pause and save it, then end QEMU (the RAM file keeps the guest's memory).
    ``query-migrate``'s answer (its ``ram`` figures, the state's size)."""
    if vm.config.snapshot is None or vm.config.snapshot.role != "save" or vm.monitor is None:
        raise VMError(f"VM {vm.vm_id} is not a template being built")
    await vm.wait_for_console(marker, timeout)
    answer = await save(vm.monitor, vm.config.snapshot.state, timeout)
    await vm.stop(grace=0, allow=ShutdownStep.QUIT)
    return answer
