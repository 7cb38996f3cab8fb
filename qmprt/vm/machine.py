"""One emulator process: start it, watch it, stop it in stages, and adopt it again after a restart.

``VM`` is the engine's face; the parts it puts together live beside it:

- ``qmprt.vm.render``: the ``VMSpec`` (and so the argv) of a ``VMConfig``;
- ``qmprt.vm.files``: the files of a VM (``state_dir`` survives reboots of qmprt, ``run_dir`` holds
  the sockets) and ``vm.json``;
- ``qmprt.vm.status``: ``vm-status.json`` and what is recorded in it (states, pid, monitor events);
- ``qmprt.vm.process``: spawning QEMU, watching for its exit (pidfd), killing it, its cgroup;
- ``qmprt.vm.shutdown``: the staged stop.

QEMU runs in its own session, with stdin from /dev/null and stderr to a file, so it outlives qmprt.
With ``VMConfig.run_as`` it starts as root, opens what it needs (disks, the sockets qmprt passes,
/dev/kvm, taps, the console log), then chroots to ``state_dir`` and becomes that user: no capabilities,
no supplementary groups, the state directory (0700 root) unreadable to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from qmprt import state
from qmprt.osutil import listening_unix_socket
from qmprt.errors import FailedPrecondition, Unavailable, VMError
from qmprt.vm.agent import GuestAgent
from qmprt.vm.attach import ConsoleInput, ConsoleTaps
from qmprt.vm.guest_exec import ExecChannel
from qmprt.vm.console import RAW_KEEP_BYTES, ConsolePump, CRILogWriter, MarkerWaiters
from qmprt.vm.monitor import Monitor, MonitorEvent, cancel_and_wait
from qmprt.vm.numa import check_host
from qmprt.vm.pinning import PinReport, parse_cpuset, pin_threads
from qmprt.vm.config import ShutdownStep, StartTimings, VMConfig, VMState, VMStatus
from qmprt.vm.exits import classify_exit, infer_unwatched_exit
from qmprt.vm import files, snapshot
from qmprt.vm.files import read_metadata, remove_state_files, tail, tail_bytes, write_metadata
from qmprt.vm.process import CgroupLike, QemuProcess, same_process
from qmprt.vm.render import render
from qmprt.vm.shutdown import StagedStop
from qmprt.vm.spec import VMSpec
from qmprt.vm.status import StatusRecord

__all__ = ["VM"]

log = logging.getLogger(__name__)

EXIT_SETTLE_SECONDS = 2.0
RESTORE_TIMEOUT_S = 60.0  # a clone reading its template's device state (a few hundred KiB)


class VM:
    """A running (or exited) emulator. Create with ``VM.start`` or ``VM.adopt``."""

    def __init__(
        self,
        config: VMConfig,
        state_dir: Path,
        run_dir: Path,
        status: StatusRecord,
        cgroup: CgroupLike | None,
        log_writer: CRILogWriter | None,
    ) -> None:
        self.config = config
        self.vm_id = config.vm_id
        self.state_dir = state_dir
        self.run_dir = run_dir
        # The listening sockets qmprt makes for QEMU (fds passed in), by their purpose.
        self.qmp_socket, self.qmp_shell_socket, self.qga_socket, self.exec_socket, self.console_socket = (
            run_dir / name for name in ("qmp.sock", "qmp-shell.sock", "qga.sock", "exec.sock", "console.sock")
        )
        self._status = status
        self.cgroup = cgroup
        self.monitor: Monitor | None = None
        self.agent = GuestAgent(str(self.qga_socket))
        self.guest_exec = ExecChannel(str(self.exec_socket))  # qmprt's exec helper, when the guest runs it
        self._process = QemuProcess(self.vm_id, cgroup)
        self._exited = asyncio.Event()
        self._events_task: asyncio.Task[None] | None = None
        self._exit_callbacks: list[Callable[[VM], None]] = []
        self._console_waiters = MarkerWaiters()
        self._after_exit_task: asyncio.Task[None] | None = None  # kept: a task nobody holds can vanish
        self._exit_task: asyncio.Task[None] | None = None
        self.timings = StartTimings()
        self.snapshot_fd = -1  # a clone's template state file: the fd QEMU inherits, same number
        self.console_taps = ConsoleTaps()  # attachers' output; console_input: their shared keyboard
        self.console_input = ConsoleInput(str(self.console_socket))
        self.console = ConsolePump(
            self.console_raw, state_dir / files.CONSOLE_OFFSET, log_writer, self._on_console_data
        )

    # -- paths ---------------------------------------------------------------------------------------
    @property
    def console_raw(self) -> Path:
        return self.state_dir / files.CONSOLE_RAW

    @property
    def _qemu_log(self) -> Path:
        return self.state_dir / files.QEMU_LOG

    @property
    def status(self) -> VMStatus:
        return self._status.value

    def on_exit(self, callback: Callable[[VM], None]) -> None:
        self._exit_callbacks.append(callback)

    @staticmethod
    def render(
        config: VMConfig, fds: dict[str, int], console_log: str, nic_fds: Sequence[int] = (), jail: str | None = None,
    ) -> VMSpec:
        """The full ``VMSpec`` of ``config`` (``qmprt.vm.render.render``)."""
        return render(config, fds, console_log, nic_fds, jail)

    # -- start -----------------------------------------------------------------------------------------
    @classmethod
    async def start(
        cls,
        config: VMConfig,
        state_dir: str | os.PathLike[str],
        run_dir: str | os.PathLike[str],
        cgroup: CgroupLike | None = None,
        log_writer: CRILogWriter | None = None,
        nic_fds: Sequence[int] = (),
    ) -> VM:
        """Spawn QEMU for ``config`` and connect to it. On failure nothing is left running.

        ``nic_fds`` are tap fds, one per ``config.nics``, passed to QEMU; the caller still owns (and
        closes) them, since QEMU holds its own copies once it runs."""
        begin = time.monotonic()
        check_host(config.memory_plan())
        state_path = state.ensure_private_dir(state_dir)
        run_path = state.ensure_private_dir(run_dir)
        vm = cls(config, state_path, run_path, StatusRecord.fresh(state_path, config.vm_id), cgroup, log_writer)
        vm.timings.begin = begin
        async with contextlib.AsyncExitStack() as undo:
            sockets = vm._listen(undo)
            spec = cls.render(
                config, {name: sock.fileno() for name, sock in sockets.items()}, str(vm.console_raw), nic_fds,
                jail=str(state_path.resolve()),
            )
            argv = spec.argv()
            vm._record_start(undo, argv)
            pass_fds = [sock.fileno() for sock in sockets.values()] + list(nic_fds)
            if config.snapshot is not None and config.snapshot.role == "restore":
                vm.snapshot_fd = snapshot.open_state(config.snapshot)
                undo.callback(os.close, vm.snapshot_fd)
                pass_fds.append(vm.snapshot_fd)
            pid = vm._process.spawn(argv, state_path, vm._qemu_log, pass_fds)
            vm.timings.spawned = time.monotonic()
            undo.push_async_callback(vm._process.kill_unstarted)
            vm._status.record_spawn(pid, QemuProcess.create_time(pid))
            for sock in sockets.values():
                sock.close()
            await vm._attach(first_start=True)
            vm.timings.monitor_ready = time.monotonic()
            if config.snapshot is not None and vm.monitor is not None:
                await snapshot.begin(vm.monitor, config.snapshot, vm.snapshot_fd, RESTORE_TIMEOUT_S)
            undo.pop_all()
        if vm.snapshot_fd >= 0:
            os.close(vm.snapshot_fd)  # QEMU has its own copy, under the same number
        return vm

    def _listen(self, undo: contextlib.AsyncExitStack) -> dict[str, socket.socket]:
        """The listening sockets QEMU gets (closed, and their files removed, on ``undo``)."""
        sockets = {
            "qmp": listening_unix_socket(self.qmp_socket),
            "qmp-shell": listening_unix_socket(self.qmp_shell_socket),
            "qga": listening_unix_socket(self.qga_socket),
            "exec": listening_unix_socket(self.exec_socket),
            "console": listening_unix_socket(self.console_socket),
        }
        for sock in sockets.values():
            undo.callback(sock.close)
        undo.callback(self._remove_sockets)
        return sockets

    def _record_start(self, undo: contextlib.AsyncExitStack, argv: list[str]) -> None:
        """Write vm.json and the first status (both removed on ``undo``); forget an old console log."""
        metadata = write_metadata(self.state_dir, self.config, self.run_dir, argv)
        undo.callback(metadata.unlink, missing_ok=True)
        self._status.write()
        undo.callback(self._status.path.unlink, missing_ok=True)
        self.console_raw.unlink(missing_ok=True)

    async def _attach(self, first_start: bool) -> None:
        """Watch the process, connect the monitor, start the console pump."""
        pid = self.status.pid
        assert pid is not None
        watching = self._process.watch(pid, self._on_process_exit)
        self.console.start()
        if not watching:
            await self._handle_exit()
            raise VMError(f"QEMU (pid {pid}) exited at once: {tail(self._qemu_log)}")
        monitor = Monitor(f"qmprt:{self.vm_id}")
        try:
            connected = await monitor.connect_unless(str(self.qmp_socket), self._exited)
        except Unavailable as err:
            raise VMError(f"QEMU's monitor did not answer: {err}; {tail(self._qemu_log)}") from err
        if not connected:
            raise VMError(f"QEMU exited during start-up: {self.status.message}")
        self.monitor = monitor
        self._events_task = asyncio.get_running_loop().create_task(
            self._status.follow(monitor, self._on_event), name=f"events:{self.vm_id}"
        )
        if first_start or self.status.state == VMState.STARTING:
            self._status.transition(VMState.RUNNING)

    # -- exit --------------------------------------------------------------------------------------
    def _on_process_exit(self) -> None:
        self._exit_task = asyncio.get_running_loop().create_task(self._handle_exit(), name=f"exit:{self.vm_id}")

    async def _handle_exit(self) -> None:
        if self._exited.is_set() or self.status.state == VMState.EXITED:
            self._exited.set()
            return
        returncode = await self._process.returncode()
        # QEMU sends SHUTDOWN before it exits: wait for the monitor connection to close, then take
        # whatever events the watcher has not handled yet.
        if self.monitor is not None:
            await self.monitor.wait_closed(EXIT_SETTLE_SECONDS)
            if self._events_task is not None:
                await cancel_and_wait(self._events_task)
            for event in self.monitor.pending_events():
                self._status.record_event(event)
            await self.monitor.close()
        self._finish(returncode, self._process.oom_kills())

    def _finish(self, returncode: int | None, oom_kills: int, note: str = "") -> None:
        status = self.status
        verdict = classify_exit(
            returncode=returncode,
            shutdown_reason=status.shutdown_reason,
            shutdown_by_guest=status.shutdown_by_guest,
            panicked=status.panicked,
            oom_kills=oom_kills,
            stop_requested=status.stop_requested,
            shutdown_step=status.shutdown_step,
            stderr_tail=tail(self._qemu_log, 300),
            console_tail=tail_bytes(self.console_raw, 4096) if self.config.exit_status_marker else b"",
            exit_status_marker=self.config.exit_status_marker,
        )
        self._status.transition(
            VMState.EXITED,
            finished_at_ns=time.time_ns(),
            exit_code=verdict.exit_code,
            reason=verdict.reason,
            message=f"{verdict.message} ({note})" if note else verdict.message,
        )
        log.info("VM %s exited: %s (%s) %s", self.vm_id, verdict.exit_code, verdict.reason, verdict.message)
        self._after_exit_task = asyncio.get_running_loop().create_task(self._after_exit(), name=f"after-exit:{self.vm_id}")
        self._exited.set()

    async def _after_exit(self) -> None:
        await self.guest_exec.close()
        await self.console.stop()
        self._console_waiters.vm_exited()
        self.console_taps.end()
        self._process.unwatch()
        self._process.remove_cgroup()
        for callback in self._exit_callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("exit callback of VM %s failed", self.vm_id)

    async def wait_exit(self, timeout: float | None = None) -> VMStatus:
        await asyncio.wait_for(self._exited.wait(), timeout)
        return self.status

    # -- console -----------------------------------------------------------------------------------
    def _on_event(self, event: MonitorEvent) -> None:
        if event.name == "VSERPORT_CHANGE" and event.data.get("id") == "exec-port":
            self.guest_exec.guest_port_changed(bool(event.data.get("open")))

    def _on_console_data(self, data: bytes) -> None:
        self._console_waiters.feed(data)
        self.console_taps.feed(data)

    async def wait_for_console(self, marker: str, timeout: float) -> None:
        """Wait until ``marker`` appears on the serial console (from now, or in the raw log's last
        ``RAW_KEEP_BYTES``: older bytes are punched out, and a backlog not yet copied reaches the waiter
        through the pump)."""
        needle = marker.encode()
        if needle in tail_bytes(self.console_raw, RAW_KEEP_BYTES):
            return
        if self.status.state == VMState.EXITED:
            raise FailedPrecondition(f"VM {self.vm_id} has exited")
        await self._console_waiters.wait(needle, timeout)

    # -- resources ---------------------------------------------------------------------------------
    async def pin(self, cpuset: str) -> PinReport:
        """Pin QEMU's threads to ``cpuset`` ("0-3,6"; the policy is in ``qmprt.vm.pinning``).

        Call it after start, after adoption and when the cpuset changes; a thread already where it
        belongs is left alone, so pinning twice to the same cpuset changes nothing. ``seconds`` in the
        report includes the QMP round trip.
        """
        begin = time.monotonic()
        cpus = parse_cpuset(cpuset)
        pid = self.status.pid
        if self.monitor is None or pid is None or self.status.state == VMState.EXITED:
            raise FailedPrecondition(f"VM {self.vm_id} is {self.status.state.value}: it has no threads to pin")
        vcpus = await self.monitor.query_vcpus()
        report = dataclasses.replace(pin_threads(pid, vcpus, cpus), seconds=time.monotonic() - begin)
        log.info("VM %s pinned: %s", self.vm_id, report.summary())
        return report

    # -- stop --------------------------------------------------------------------------------------
    async def stop(self, grace: float, allow: ShutdownStep = ShutdownStep.KILL) -> ShutdownStep:
        """Stop in stages: ``system_powerdown`` within ``grace`` s, then QMP ``quit``, then SIGKILL.

        Returns the step that ended the VM; raises ``ShutdownError`` when it needed a step past ``allow``.
        Stopping an exited VM does nothing.
        """
        if self.status.state == VMState.EXITED:
            return ShutdownStep.NONE
        if self.status.state != VMState.STOPPING:
            self._status.transition(VMState.STOPPING, stop_requested=True)
        stop = StagedStop(
            self.vm_id, self._status, self._exited, lambda: self.monitor, lambda: self._process.kill(self.status)
        )
        return await stop.run(grace, allow)

    # -- adoption ----------------------------------------------------------------------------------
    @classmethod
    async def adopt(
        cls,
        state_dir: str | os.PathLike[str],
        cgroup: CgroupLike | None = None,
        log_writer: CRILogWriter | None = None,
    ) -> VM:
        """Take over a VM started by an earlier qmprt process.

        If its QEMU still runs (same pid, same start time, same ``-name``), reconnect the monitor and
        the console pump. If it died meanwhile, record it as exited with the reason the recorded
        events allow; it is never silently dropped.
        """
        state_path = Path(state_dir)
        metadata = read_metadata(state_path)
        state.remove_stale_temp_files(state_path)
        config = VMConfig.from_json(metadata["config"])
        status = StatusRecord.load(state_path, config.vm_id)
        vm = cls(config, state_path, Path(metadata["run_dir"]), status, cgroup, log_writer)
        current = status.value
        if current.state == VMState.EXITED:
            vm._exited.set()
            vm.console.drain()
            vm.console.close()
            return vm
        process = None
        if current.pid is not None:
            process = same_process(current.pid, current.pid_create_time, config.vm_id)
        if process is None:
            await vm._exited_unwatched()
            return vm
        await vm._attach(first_start=False)
        return vm

    async def _exited_unwatched(self) -> None:
        """Record the exit of a QEMU that died while no qmprt watched it, as far as its files tell."""
        self.console.drain()
        oom_kills = self._process.oom_kills()
        evidence = infer_unwatched_exit(tail_bytes(self.console_raw, 4096), tail(self._qemu_log))
        if evidence:
            self._status.record_evidence(evidence)
        self._finish(None, oom_kills, note="seen after a qmprt restart")
        await asyncio.sleep(0)

    # -- detach and removal --------------------------------------------------------------------------
    async def detach(self) -> None:
        """Let go of a running VM without stopping it (qmprt is shutting down)."""
        self._process.unwatch()
        if self._events_task is not None:
            await cancel_and_wait(self._events_task)
        await self.guest_exec.close()
        await self.console.stop()
        if self.monitor is not None:
            await self.monitor.close()
            self.monitor = None

    def _remove_sockets(self) -> None:
        for path in (self.qmp_socket, self.qmp_shell_socket, self.qga_socket, self.exec_socket, self.console_socket):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.run_dir.rmdir()

    def remove_files(self) -> None:
        """Delete the VM's files; the VM must have exited."""
        if self.status.state != VMState.EXITED:
            raise FailedPrecondition(f"VM {self.vm_id} is {self.status.state.value}: stop it first")
        self._remove_sockets()
        remove_state_files(self.state_dir)
