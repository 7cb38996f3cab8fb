"""The emulator process of one VM: spawn it, know it again after a restart, watch for its exit, kill it.

QEMU runs in its own session, with stdin from /dev/null and stderr to a file, so it outlives qmprt.
Its exit is seen through a pidfd in the event loop; after a restart it is recognised by pid, start
time and ``-name`` (a reused pid is not it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import psutil

from qmprt.errors import VMError, best_effort
from qmprt.vm.config import VMStatus

log = logging.getLogger(__name__)


class CgroupLike(Protocol):
    """What the engine needs of a cgroup (``qmprt.cgroups`` provides it)."""

    @property
    def path(self) -> str: ...

    def exec_prefix(self) -> list[str]: ...
    def oom_kill_count(self) -> int: ...
    def kill(self) -> None: ...
    def delete(self) -> None: ...


def same_process(pid: int, create_time: float | None, vm_id: str) -> psutil.Process | None:
    """The live process ``pid`` if it is still the emulator qmprt started (not a reused pid)."""
    try:
        process = psutil.Process(pid)
        if create_time is not None and abs(process.create_time() - create_time) > 0.05:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if not any(f"guest={vm_id}" in arg for arg in process.cmdline()):
            return None
        return process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class QemuProcess:
    """The QEMU of VM ``vm_id`` in ``cgroup`` (if any): the child qmprt spawned (none for an adopted
    VM) and the pidfd that reports its exit."""

    def __init__(self, vm_id: str, cgroup: CgroupLike | None) -> None:
        self.vm_id = vm_id
        self.cgroup = cgroup
        self._popen: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None

    def spawn(self, argv: list[str], cwd: Path, stderr_path: Path, pass_fds: Sequence[int]) -> int:
        """Run ``argv`` (inside the cgroup), stdout and stderr to ``stderr_path``; returns its pid."""
        prefix = self.cgroup.exec_prefix() if self.cgroup is not None else []
        stderr_fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self._popen = subprocess.Popen(
                prefix + argv,
                stdin=subprocess.DEVNULL,
                stdout=stderr_fd,
                stderr=stderr_fd,
                pass_fds=list(pass_fds),
                start_new_session=True,
                cwd=cwd,
            )
        except OSError as err:
            raise VMError(f"cannot run {argv[0]}: {err}") from err
        finally:
            os.close(stderr_fd)
        return self._popen.pid

    @staticmethod
    def create_time(pid: int) -> float | None:
        try:
            return psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            return None

    async def returncode(self) -> int | None:
        """The exit status of the spawned child once it has exited (None for an adopted VM)."""
        if self._popen is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(None, self._popen.wait)

    def watch(self, pid: int, on_exit: Callable[[], None]) -> bool:
        """Call ``on_exit`` (once) when ``pid`` exits; False if it is gone already."""
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None
            return False
        asyncio.get_running_loop().add_reader(self._pidfd, self._exited, on_exit)
        return True

    def _exited(self, on_exit: Callable[[], None]) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
        on_exit()

    def unwatch(self) -> None:
        """Stop watching and close the pidfd."""
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def kill_unstarted(self) -> None:
        """Undo a start that failed after the spawn: kill and reap the child, kill the cgroup."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
            await asyncio.get_running_loop().run_in_executor(None, self._popen.wait)
        self._kill_cgroup()

    def kill(self, status: VMStatus) -> None:
        """SIGKILL the QEMU that ``status`` records (if it is still that one), and its cgroup."""
        if status.pid is not None:
            process = same_process(status.pid, status.pid_create_time, self.vm_id)
            if process is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        self._kill_cgroup()

    def _kill_cgroup(self) -> None:
        if self.cgroup is not None:
            with best_effort(log, f"killing the cgroup {self.cgroup.path} of VM {self.vm_id}"):
                self.cgroup.kill()

    def oom_kills(self) -> int:
        """How often the kernel's OOM killer struck in the cgroup (0 without one, or unreadable)."""
        if self.cgroup is not None:
            with best_effort(log, f"reading the OOM count of VM {self.vm_id}"):
                return self.cgroup.oom_kill_count()
        return 0

    def remove_cgroup(self) -> None:
        """Kill what is left in the cgroup and delete it (after the exit)."""
        if self.cgroup is not None:
            try:
                self.cgroup.kill()
                self.cgroup.delete()
            except Exception as err:
                log.warning("VM %s: cgroup %s not removed: %s", self.vm_id, self.cgroup.path, err)
