"""One emulator process: start it, watch it, stop it in stages, and adopt it again after a restart.

Files of a VM (``state_dir`` survives reboots of qmprt; ``run_dir`` holds the sockets, kept short
because a unix socket path has at most 107 bytes)::

    state_dir/vm.json         what was started: config and argv, written once
    state_dir/vm-status.json  pid, state, events seen, exit; replaced atomically
    state_dir/qemu.log        QEMU's stderr
    state_dir/console.raw     every byte of the serial console (QEMU's chardev logfile)
    state_dir/console.offset  how far the console pump has copied into the CRI log
    run_dir/qmp.sock          qmprt's monitor        run_dir/qmp-shell.sock  the monitor for people
    run_dir/qga.sock          the guest agent        run_dir/console.sock    the interactive console

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
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import psutil

from qmprt import state
from qmprt.osutil import listening_unix_socket
from qmprt.errors import FailedPrecondition, InvalidArgument, NotFound, ShutdownError, Unavailable, VMError, best_effort
from qmprt.vm.agent import GuestAgent
from qmprt.vm.console import RAW_KEEP_BYTES, ConsolePump, CRILogWriter
from qmprt.vm.devices import (
    Blockdev,
    PvPanic,
    QMPMonitor,
    RawArgs,
    SerialConsole,
    SocketChardev,
    TapNetdev,
    VirtioBalloon,
    VirtioBlk,
    VirtioNet,
    VirtioRng,
    VirtioSerial,
    VirtSerialPort,
)
from qmprt.vm.monitor import Monitor, MonitorEvent
from qmprt.vm.numa import check_host
from qmprt.vm.pinning import PinReport, parse_cpuset, pin_threads
from qmprt.vm.config import (
    DiskConfig,
    NICConfig,
    ShutdownStep,
    StartTimings,
    VMConfig,
    VMState,
    VMStatus,
    allowed_transition,
)
from qmprt.vm.exits import ExitVerdict, classify_exit, infer_unwatched_exit
from qmprt.vm.spec import Device, VMSpec

__all__ = [
    "VM",
    "CgroupLike",
    "DiskConfig",
    "ExitVerdict",
    "NICConfig",
    "ShutdownStep",
    "StartTimings",
    "VMConfig",
    "VMState",
    "VMStatus",
    "classify_exit",
    "infer_unwatched_exit",
]

log = logging.getLogger(__name__)

METADATA_VERSION = 1
GUEST_AGENT_PORT = "org.qemu.guest_agent.0"
EXIT_SETTLE_SECONDS = 2.0
POWERDOWN_REPEAT_SECONDS = 2.0  # between presses of the power button during a stop's grace period
SHUTDOWN_COMMAND_SECONDS = 2.0  # a monitor command of a stop step that gets no answer is given up


class CgroupLike(Protocol):
    """What the engine needs of a cgroup (``qmprt.cgroups`` provides it)."""

    @property
    def path(self) -> str: ...

    def exec_prefix(self) -> list[str]: ...
    def oom_kill_count(self) -> int: ...
    def kill(self) -> None: ...
    def delete(self) -> None: ...


VM_STATE_FILES = ("vm.json", "vm-status.json", "qemu.log", "console.raw", "console.offset")


def remove_state_files(state_dir: Path) -> None:
    """The files ``VM.start`` writes into ``state_dir`` (for a VM that exited, or never ran)."""
    for name in VM_STATE_FILES:
        (state_dir / name).unlink(missing_ok=True)


def started_for_sure(state_dir: Path) -> bool:
    """Whether a VM start in ``state_dir`` got as far as recording its QEMU's pid; a start cut before
    that (vm.json without a status, or a status without a pid) may or may not have spawned QEMU."""
    try:
        status = state.read_json(state_dir / "vm-status.json")
    except (NotFound, ValueError):
        return False
    return isinstance(status, dict) and status.get("pid") is not None


def _tail_bytes(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read()
    except OSError:
        return b""


def _tail(path: Path, limit: int = 600) -> str:
    return _tail_bytes(path, limit).decode(errors="replace")


def _same_process(pid: int, create_time: float | None, vm_id: str) -> psutil.Process | None:
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


class VM:
    """A running (or exited) emulator. Create with ``VM.start`` or ``VM.adopt``."""

    def __init__(
        self,
        config: VMConfig,
        state_dir: Path,
        run_dir: Path,
        status: state.StatusFile[VMStatus],
        cgroup: CgroupLike | None,
        log_writer: CRILogWriter | None,
    ) -> None:
        self.config = config
        self.vm_id = config.vm_id
        self.state_dir = state_dir
        self.run_dir = run_dir
        self._status = status
        self.cgroup = cgroup
        self.monitor: Monitor | None = None
        self.agent = GuestAgent(str(self.qga_socket))
        self._popen: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._exited = asyncio.Event()
        self._events_task: asyncio.Task[None] | None = None
        self._exit_callbacks: list[Callable[[VM], None]] = []
        self._console_waiters: list[tuple[bytes, asyncio.Future[None]]] = []
        self._console_tail = b""
        self._after_exit_task: asyncio.Task[None] | None = None  # kept: a task nobody holds can vanish
        self.timings = StartTimings()
        self.console = ConsolePump(self.console_raw, state_dir / "console.offset", log_writer, self._on_console)

    # -- paths ---------------------------------------------------------------------------------------
    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def qmp_shell_socket(self) -> Path:
        return self.run_dir / "qmp-shell.sock"

    @property
    def qga_socket(self) -> Path:
        return self.run_dir / "qga.sock"

    @property
    def console_socket(self) -> Path:
        return self.run_dir / "console.sock"

    @property
    def console_raw(self) -> Path:
        return self.state_dir / "console.raw"

    @property
    def status(self) -> VMStatus:
        return self._status.value

    def on_exit(self, callback: Callable[[VM], None]) -> None:
        self._exit_callbacks.append(callback)

    # -- rendering -------------------------------------------------------------------------------------
    @staticmethod
    def render(
        config: VMConfig, fds: dict[str, int], console_log: str, nic_fds: Sequence[int] = (), jail: str | None = None,
    ) -> VMSpec:
        """The full ``VMSpec`` of ``config``, given the fds of the qmprt-made listening sockets and one
        tap fd per NIC of ``config.nics``; a QEMU that drops root (``config.run_as``) chroots to ``jail``."""
        if len(nic_fds) != len(config.nics):
            raise InvalidArgument(f"{len(config.nics)} NICs configured but {len(nic_fds)} tap fds given")
        memory = config.memory_plan()
        spec_probe = VMSpec(
            name=config.vm_id, machine=config.machine, accel=config.accel, cpus=config.cpus,
            memory_mib=config.memory_mib, kernel=config.kernel,
            memory_backends=memory.backends, numa_nodes=memory.nodes,
        )
        transport = spec_probe.transport
        devices: list[Device] = [
            SocketChardev("qmp", fds["qmp"]),
            QMPMonitor("qmp"),
            SocketChardev("qmp-shell", fds["qmp-shell"]),
            QMPMonitor("qmp-shell"),
            SocketChardev("console", fds["console"], logfile=console_log),
            SerialConsole("console"),
        ]
        disks = [("root", config.root_disk)]
        if config.seed is not None:
            disks.append(("seed", config.seed))
        disks += [(f"disk{index}", disk) for index, disk in enumerate(config.extra_disks)]
        for index, (node, disk) in enumerate(disks):
            devices.append(Blockdev(node, disk.path, disk.format, read_only=disk.read_only))  # type: ignore[arg-type]
            devices.append(
                VirtioBlk(
                    f"blk-{node}", node, transport, serial=disk.serial,
                    bootindex=0 if index == 0 and config.kernel is None else None,
                )
            )
        if config.extra_args:
            devices.append(RawArgs(config.extra_args))
        for index, (nic, tap_fd) in enumerate(zip(config.nics, nic_fds)):
            devices.append(TapNetdev(f"net{index}", tap_fd))
            devices.append(VirtioNet(f"nic{index}", f"net{index}", nic.mac, transport, host_mtu=nic.mtu))
        devices += [
            VirtioSerial("vser0", transport),
            SocketChardev("qga", fds["qga"]),
            VirtSerialPort("qga-port", "vser0", "qga", GUEST_AGENT_PORT),
            VirtioRng("rng0", transport),
            VirtioBalloon("balloon0", transport),
            PvPanic(transport),
        ]
        return dataclasses.replace(
            spec_probe, devices=tuple(devices), binary=config.binary, tcg_tb_size_mib=config.tcg_tb_size_mib,
            run_as=config.run_as, chroot=jail if config.run_as is not None else None,
        )

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
        status = state.StatusFile(state_path / "vm-status.json", VMStatus(), VMStatus.to_json, VMStatus.from_json)
        vm = cls(config, state_path, run_path, status, cgroup, log_writer)
        vm.timings.begin = begin
        async with contextlib.AsyncExitStack() as undo:
            sockets = {
                "qmp": listening_unix_socket(vm.qmp_socket),
                "qmp-shell": listening_unix_socket(vm.qmp_shell_socket),
                "qga": listening_unix_socket(vm.qga_socket),
                "console": listening_unix_socket(vm.console_socket),
            }
            for sock in sockets.values():
                undo.callback(sock.close)
            undo.callback(vm._remove_sockets)
            spec = cls.render(
                config, {name: sock.fileno() for name, sock in sockets.items()}, str(vm.console_raw), nic_fds,
                jail=str(state_path.resolve()),
            )
            argv = spec.argv()
            state.write_json_atomic(
                state_path / "vm.json",
                {"version": METADATA_VERSION, "config": config.to_json(), "run_dir": str(run_path), "argv": argv},
                exclusive=True,
            )
            undo.callback((state_path / "vm.json").unlink, missing_ok=True)
            status.update(lambda s: s)
            undo.callback(status.path.unlink, missing_ok=True)
            vm.console_raw.unlink(missing_ok=True)

            prefix = cgroup.exec_prefix() if cgroup is not None else []
            stderr_fd = os.open(state_path / "qemu.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                vm._popen = subprocess.Popen(
                    prefix + argv,
                    stdin=subprocess.DEVNULL,
                    stdout=stderr_fd,
                    stderr=stderr_fd,
                    pass_fds=[sock.fileno() for sock in sockets.values()] + list(nic_fds),
                    start_new_session=True,
                    cwd=state_path,
                )
            except OSError as err:
                raise VMError(f"cannot run {argv[0]}: {err}") from err
            finally:
                os.close(stderr_fd)
            vm.timings.spawned = time.monotonic()
            undo.push_async_callback(vm._kill_unstarted)
            pid = vm._popen.pid
            try:
                create_time = psutil.Process(pid).create_time()
            except psutil.NoSuchProcess:
                create_time = None
            started_at = time.time_ns()
            status.update(lambda s: dataclasses.replace(s, pid=pid, pid_create_time=create_time, started_at_ns=started_at))
            for sock in sockets.values():
                sock.close()
            await vm._attach(first_start=True)
            vm.timings.monitor_ready = time.monotonic()
            undo.pop_all()
        return vm

    async def _kill_unstarted(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
            await asyncio.get_running_loop().run_in_executor(None, self._popen.wait)
        if self.cgroup is not None:
            with best_effort(log, f"killing the cgroup {self.cgroup.path} of VM {self.vm_id}"):
                self.cgroup.kill()

    async def _attach(self, first_start: bool) -> None:
        """Watch the process, connect the monitor, start the console pump."""
        pid = self.status.pid
        assert pid is not None
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._on_pidfd)
        self.console.start()
        if self._pidfd is None:
            await self._handle_exit()
            raise VMError(f"QEMU (pid {pid}) exited at once: {_tail(self.state_dir / 'qemu.log')}")
        monitor = Monitor(f"qmprt:{self.vm_id}")
        connect = asyncio.ensure_future(monitor.connect(str(self.qmp_socket)))
        exited = asyncio.ensure_future(self._exited.wait())
        done, _ = await asyncio.wait({connect, exited}, return_when=asyncio.FIRST_COMPLETED)
        if connect not in done:
            connect.cancel()
            with contextlib.suppress(BaseException):
                await connect
            raise VMError(f"QEMU exited during start-up: {self.status.message}")
        exited.cancel()
        try:
            connect.result()
        except Unavailable as err:
            raise VMError(f"QEMU's monitor did not answer: {err}; {_tail(self.state_dir / 'qemu.log')}") from err
        self.monitor = monitor
        self._events_task = loop.create_task(self._watch_events(monitor), name=f"events:{self.vm_id}")
        if first_start or self.status.state == VMState.STARTING:
            self._transition(VMState.RUNNING)

    def _transition(self, new_state: VMState, **changes: Any) -> None:
        def change(status: VMStatus) -> VMStatus:
            if not allowed_transition(status.state, new_state):
                raise FailedPrecondition(f"VM {self.vm_id}: {status.state.value} cannot become {new_state.value}")
            return dataclasses.replace(status, state=new_state, **changes)

        self._status.update(change)

    # -- events and exit ---------------------------------------------------------------------------
    async def _watch_events(self, monitor: Monitor) -> None:
        try:
            async for event in monitor.events():
                self._record_event(event)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the stream ends when QEMU goes away
            log.debug("VM %s event stream ended: %r", self.vm_id, err)

    def _record_event(self, event: MonitorEvent) -> None:
        log.info("VM %s: %s %s", self.vm_id, event.name, dict(event.data))
        if event.name == "SHUTDOWN":
            self._status.update(
                lambda s: dataclasses.replace(
                    s, shutdown_reason=str(event.data.get("reason")), shutdown_by_guest=bool(event.data.get("guest"))
                )
            )
        elif event.name == "GUEST_PANICKED":
            self._status.update(lambda s: dataclasses.replace(s, panicked=True))
        elif event.name in ("STOP", "RESUME"):
            paused = event.name == "STOP"
            self._status.update(lambda s: dataclasses.replace(s, paused=paused))

    def _on_pidfd(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
        loop.create_task(self._handle_exit(), name=f"exit:{self.vm_id}")

    async def _handle_exit(self) -> None:
        if self._exited.is_set() or self.status.state == VMState.EXITED:
            self._exited.set()
            return
        returncode: int | None = None
        if self._popen is not None:
            returncode = await asyncio.get_running_loop().run_in_executor(None, self._popen.wait)
        # QEMU sends SHUTDOWN before it exits: wait for the monitor connection to close, then take
        # whatever events the watcher has not handled yet.
        if self.monitor is not None:
            await self.monitor.wait_closed(EXIT_SETTLE_SECONDS)
            if self._events_task is not None:
                self._events_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._events_task
            for event in self.monitor.pending_events():
                self._record_event(event)
            await self.monitor.close()
        oom_kills = 0
        if self.cgroup is not None:
            with best_effort(log, f"reading the OOM count of VM {self.vm_id}"):
                oom_kills = self.cgroup.oom_kill_count()
        self._finish(returncode, oom_kills)

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
            stderr_tail=_tail(self.state_dir / "qemu.log", 300),
            console_tail=_tail_bytes(self.console_raw, 4096) if self.config.exit_status_marker else b"",
            exit_status_marker=self.config.exit_status_marker,
        )
        self._transition(
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
        await self.console.stop()
        for marker, waiter in self._console_waiters:
            if not waiter.done():
                waiter.set_exception(FailedPrecondition(f"the VM exited before printing {marker!r}"))
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self.cgroup is not None:
            try:
                self.cgroup.kill()
                self.cgroup.delete()
            except Exception as err:
                log.warning("VM %s: cgroup %s not removed: %s", self.vm_id, self.cgroup.path, err)
        for callback in self._exit_callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("exit callback of VM %s failed", self.vm_id)

    async def wait_exit(self, timeout: float | None = None) -> VMStatus:
        await asyncio.wait_for(self._exited.wait(), timeout)
        return self.status

    # -- console -----------------------------------------------------------------------------------
    def _on_console(self, data: bytes) -> None:
        self._console_tail = (self._console_tail + data)[-4096:]
        for marker, waiter in list(self._console_waiters):
            if marker in self._console_tail and not waiter.done():
                waiter.set_result(None)
        self._console_waiters = [(m, w) for m, w in self._console_waiters if not w.done()]

    async def wait_for_console(self, marker: str, timeout: float) -> None:
        """Wait until ``marker`` appears on the serial console (from now, or in the raw log's last
        ``RAW_KEEP_BYTES``: older bytes are punched out, and a backlog not yet copied reaches the waiter
        through the pump)."""
        needle = marker.encode()
        if needle in _tail_bytes(self.console_raw, RAW_KEEP_BYTES):
            return
        if self.status.state == VMState.EXITED:
            raise FailedPrecondition(f"VM {self.vm_id} has exited")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._console_waiters.append((needle, waiter))
        await asyncio.wait_for(waiter, timeout)

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
            self._transition(VMState.STOPPING, stop_requested=True)
        steps: list[tuple[ShutdownStep, float]] = []
        if grace > 0:
            steps.append((ShutdownStep.POWERDOWN, grace))
        steps += [(ShutdownStep.QUIT, 5.0), (ShutdownStep.KILL, 10.0)]
        for step, wait in steps:
            if step > allow:
                raise ShutdownError(f"VM {self.vm_id} did not stop with {ShutdownStep(allow).name}", step.name)
            self._record_step(step)
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
            await self._shutdown_step(step)
            remaining = deadline - asyncio.get_running_loop().time()
            pause = min(remaining, POWERDOWN_REPEAT_SECONDS) if step == ShutdownStep.POWERDOWN else remaining
            try:
                await asyncio.wait_for(asyncio.shield(self._exited.wait()), max(pause, 0))
                return True
            except asyncio.TimeoutError:
                if pause >= remaining:
                    return False

    def _record_step(self, step: ShutdownStep) -> None:
        self._status.update(lambda status: dataclasses.replace(status, shutdown_step=int(step)))

    async def _shutdown_step(self, step: ShutdownStep) -> None:
        try:
            # A frozen QEMU never answers: each command gets a deadline so the stop moves on.
            if step == ShutdownStep.POWERDOWN and self.monitor is not None:
                await asyncio.wait_for(self.monitor.execute("system_powerdown"), SHUTDOWN_COMMAND_SECONDS)
            elif step == ShutdownStep.QUIT and self.monitor is not None:
                await asyncio.wait_for(self.monitor.execute("quit"), SHUTDOWN_COMMAND_SECONDS)
            elif step == ShutdownStep.KILL:
                self._kill_process()
        except (Unavailable, VMError, asyncio.TimeoutError) as err:
            log.info("VM %s: %s: %s", self.vm_id, step.name, err or "no answer from the monitor")

    def _kill_process(self) -> None:
        status = self.status
        if status.pid is not None:
            process = _same_process(status.pid, status.pid_create_time, self.vm_id)
            if process is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        if self.cgroup is not None:
            with best_effort(log, f"killing the cgroup {self.cgroup.path} of VM {self.vm_id}"):
                self.cgroup.kill()

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
        try:
            metadata = state.read_json(state_path / "vm.json")
        except NotFound as err:
            raise NotFound(f"no VM in {state_path}") from err
        state.remove_stale_temp_files(state_path)
        config = VMConfig.from_json(metadata["config"])
        status = state.StatusFile.load(state_path / "vm-status.json", VMStatus.to_json, VMStatus.from_json)
        vm = cls(config, state_path, Path(metadata["run_dir"]), status, cgroup, log_writer)
        current = status.value
        if current.state == VMState.EXITED:
            vm._exited.set()
            vm.console.drain()
            vm.console.close()
            return vm
        process = None
        if current.pid is not None:
            process = _same_process(current.pid, current.pid_create_time, config.vm_id)
        if process is None:
            vm.console.drain()
            oom_kills = 0
            if cgroup is not None:
                with best_effort(log, f"reading the OOM count of VM {config.vm_id}"):
                    oom_kills = cgroup.oom_kill_count()
            evidence = infer_unwatched_exit(_tail_bytes(vm.console_raw, 4096), _tail(state_path / "qemu.log"))
            if evidence:
                vm._status.update(lambda status: dataclasses.replace(status, **evidence))
            vm._finish(None, oom_kills, note="seen after a qmprt restart")
            await asyncio.sleep(0)
            return vm
        await vm._attach(first_start=False)
        return vm

    # -- detach and removal --------------------------------------------------------------------------
    async def detach(self) -> None:
        """Let go of a running VM without stopping it (qmprt is shutting down)."""
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(BaseException):
                await self._events_task
        await self.console.stop()
        if self.monitor is not None:
            await self.monitor.close()
            self.monitor = None

    def _remove_sockets(self) -> None:
        for path in (self.qmp_socket, self.qmp_shell_socket, self.qga_socket, self.console_socket):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.run_dir.rmdir()

    def remove_files(self) -> None:
        """Delete the VM's files; the VM must have exited."""
        if self.status.state != VMState.EXITED:
            raise FailedPrecondition(f"VM {self.vm_id} is {self.status.state.value}: stop it first")
        self._remove_sockets()
        remove_state_files(self.state_dir)
