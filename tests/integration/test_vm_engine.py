"""The VM engine on real QEMU: the tiny guest boots, talks, stops, crashes, and survives restarts."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from qmprt import cgroups
from qmprt.cloudinit import SeedSpec
from qmprt.errors import ShutdownError
from qmprt.vm.console import CRILogWriter
from qmprt.vm.config import ShutdownStep, VMState
from qmprt.vm.machine import VM

from .conftest import make_cgroup
from .guests import BOOT_MODES, TinyGuest, vm_config

BOOT_TIMEOUT = 90
CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout [PF] ")


async def boot(
    tiny: TinyGuest, tmp_path: Path, run_dir: Path, vms: list[VM], driver: cgroups.CgroupDriver,
    vm_id: str, mode: str = "q35-direct", seed: SeedSpec | None = None,
) -> VM:
    config = vm_config(tiny, tmp_path / vm_id, vm_id, mode, seed)
    cgroup = make_cgroup(driver, vm_id)
    try:
        vm = await VM.start(
            config, tmp_path / vm_id, run_dir / vm_id, cgroup=cgroup,
            log_writer=CRILogWriter(tmp_path / f"{vm_id}.log"),
        )
    except BaseException:
        cgroup.kill()
        cgroup.delete()
        raise
    vms.append(vm)
    await vm.wait_for_console(tiny.ready_marker, BOOT_TIMEOUT)
    return vm


@pytest.mark.parametrize("mode", list(BOOT_MODES), ids=list(BOOT_MODES))
async def test_boot_talk_and_graceful_stop(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver, mode) -> None:
    seed = SeedSpec(instance_id=f"{vm_tag}-{mode}", hostname=f"guest-{mode}")
    vm = await boot(tiny, tmp_path, run_dir, vms, cgroup_driver, f"{vm_tag}-{mode}", mode, seed)
    assert vm.status.state == VMState.RUNNING
    assert vm.monitor is not None
    assert await vm.monitor.query_status() == "running"
    vcpus = await vm.monitor.query_vcpus()
    assert len(vcpus) == 1
    # The emulator and its vCPU thread live in the VM's own cgroup.
    assert vm.cgroup is not None and vm.status.pid in vm.cgroup.pids()
    assert f":/{vm.cgroup.path}\n" in Path(f"/proc/{vm.status.pid}/task/{vcpus[0].thread_id}/cgroup").read_text()

    await vm.agent.ping()
    uname = await vm.agent.exec(["uname", "-r"], timeout=20)
    assert (uname.exit_code, uname.stdout.decode().strip()) == (0, tiny.kernel_version)
    hostname = await vm.agent.exec(["cat", "/etc/hostname"], timeout=20)
    assert hostname.stdout.decode().strip() == f"guest-{mode}"
    failing = await vm.agent.exec(["sh", "-c", "echo oops >&2; exit 3"], timeout=20)
    assert (failing.exit_code, failing.stderr) == (3, b"oops\n")

    cgroup_path = vm.cgroup.path
    assert await vm.stop(grace=30) == ShutdownStep.POWERDOWN
    status = vm.status
    assert (status.state, status.exit_code, status.reason) == (VMState.EXITED, 0, "Completed")
    assert status.finished_at_ns > status.started_at_ns > 0
    await asyncio.sleep(0.2)
    assert not cgroup_driver.exists(cgroup_path), "the VM's cgroup outlived it"
    lines = (tmp_path / f"{vm.vm_id}.log").read_text().splitlines()
    assert all(CRI_LINE.match(line) for line in lines), lines[:5]
    assert any(line.endswith(f"F {tiny.ready_marker}") for line in lines)
    assert any("reboot: Power down" in line for line in lines)


async def test_guest_poweroff_is_completed(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    seed = SeedSpec(instance_id=vm_tag, hostname="leaver", command=("/bin/sh", "-c", "echo bye; poweroff"))
    vm = await boot(tiny, tmp_path, run_dir, vms, cgroup_driver, f"{vm_tag}-off", seed=seed)
    status = await vm.wait_exit(60)
    assert (status.exit_code, status.reason, status.shutdown_reason) == (0, "Completed", "guest-shutdown")
    assert "F bye" in (tmp_path / f"{vm.vm_id}.log").read_text()


async def test_killed_emulator_is_an_error(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    vm = await boot(tiny, tmp_path, run_dir, vms, cgroup_driver, f"{vm_tag}-kill")
    assert vm.status.pid is not None
    psutil.Process(vm.status.pid).send_signal(signal.SIGKILL)
    status = await vm.wait_exit(30)
    assert (status.exit_code, status.reason) == (137, "Error")
    assert "SIGKILL" in status.message


async def test_guest_panic_is_reported(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    vm = await boot(tiny, tmp_path, run_dir, vms, cgroup_driver, f"{vm_tag}-panic")
    await vm.agent.exec(["sh", "-c", "(sleep 0.5; echo c > /proc/sysrq-trigger) >/dev/null 2>&1 &"], timeout=20)
    status = await vm.wait_exit(60)
    assert status.panicked
    assert (status.exit_code, status.reason) == (1, "Error")
    assert "panicked" in status.message


async def test_unresponsive_guest_escalates(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    vm = await boot(tiny, tmp_path, run_dir, vms, cgroup_driver, f"{vm_tag}-stuck")
    assert vm.monitor is not None
    await vm.monitor.execute("stop")  # a paused guest cannot answer the power button
    with pytest.raises(ShutdownError) as raised:
        await vm.stop(grace=1, allow=ShutdownStep.POWERDOWN)
    assert raised.value.step == "QUIT"
    assert vm.status.state == VMState.STOPPING
    assert await vm.stop(grace=1) == ShutdownStep.QUIT
    assert (vm.status.exit_code, vm.status.reason) == (137, "Error")
    assert "did not power off" in vm.status.message


async def test_a_stop_while_the_guest_boots_is_a_power_off(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    """The first power-button press comes before the guest's acpid runs; a later one is heard."""
    vm_id = f"{vm_tag}-early"
    cgroup = make_cgroup(cgroup_driver, vm_id)
    vm = await VM.start(vm_config(tiny, tmp_path / vm_id, vm_id, "q35-direct", None), tmp_path / vm_id,
                        run_dir / vm_id, cgroup=cgroup)
    vms.append(vm)
    started = time.monotonic()
    assert await vm.stop(grace=60) == ShutdownStep.POWERDOWN
    assert time.monotonic() - started < 30, "the stop waited for the grace period instead of pressing again"
    assert (vm.status.exit_code, vm.status.reason) == (0, "Completed")


async def test_a_frozen_qemu_is_stopped_within_its_bounds(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    """SIGSTOP: the monitor never answers, so each step's command times out and SIGKILL ends it."""
    vm = await boot(tiny, tmp_path, run_dir, vms, cgroup_driver, f"{vm_tag}-frozen")
    assert vm.status.pid is not None
    psutil.Process(vm.status.pid).suspend()
    started = time.monotonic()
    assert await vm.stop(grace=1) == ShutdownStep.KILL
    assert time.monotonic() - started < 1 + 2 + 5 + 2 + 10
    assert vm.status.exit_code == 137


async def test_execs_run_side_by_side_and_keep_their_timeouts(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    """A long exec does not hold back a probe's short one; a timeout is kept to within a second."""
    from qmprt.errors import DeadlineExceeded

    vm = await boot(tiny, tmp_path, run_dir, vms, cgroup_driver, f"{vm_tag}-execs")
    long_exec = asyncio.create_task(vm.agent.exec(["sleep", "8"], timeout=30))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    assert (await vm.agent.exec(["true"], timeout=5)).exit_code == 0
    assert time.monotonic() - started < 4, "the short exec waited behind the long one"
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await vm.agent.exec(["sleep", "30"], timeout=2)
    assert time.monotonic() - started < 3.5
    assert (await long_exec).exit_code == 0
    await vm.stop(grace=30)


def _start_in_child(config_json: str, state_dir: Path, run_dir: Path, cgroup_path: str, log: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("supervisor_child.py")), config_json,
         str(state_dir), str(run_dir), cgroup_path, str(log)],
        stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.startswith("started"), line
    return child


async def test_vm_survives_a_restart_of_its_supervisor(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    vm_id = f"{vm_tag}-adopt"
    config = vm_config(tiny, tmp_path / vm_id, vm_id, seed=SeedSpec(instance_id=vm_id, hostname="phoenix"))
    cgroup = make_cgroup(cgroup_driver, vm_id)
    log = tmp_path / "adopt.log"
    child = _start_in_child(json.dumps(config.to_json()), tmp_path / vm_id, run_dir / vm_id, cgroup.path, log)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while tiny.ready_marker not in log.read_text(errors="replace") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        child.kill()  # the supervisor dies without any cleanup
        child.wait()
        vm = await VM.adopt(tmp_path / vm_id, cgroup=cgroup_driver.open(cgroup.path), log_writer=CRILogWriter(log))
        vms.append(vm)
        assert vm.status.state == VMState.RUNNING
        assert vm.monitor is not None and await vm.monitor.query_status() == "running"
        hostname = await vm.agent.exec(["cat", "/etc/hostname"], timeout=20)
        assert hostname.stdout == b"phoenix\n"
        # Console output after the restart still reaches the same CRI log, once.
        await vm.agent.exec(["sh", "-c", "echo after-restart > /dev/ttyS0"], timeout=20)
        await vm.wait_for_console("after-restart", 20)
        await asyncio.sleep(0.2)
        text = log.read_text()
        assert text.count(f"F {tiny.ready_marker}\n") == 1 and text.count("F after-restart\n") == 1
        assert await vm.stop(grace=30) == ShutdownStep.POWERDOWN
        assert (vm.status.exit_code, vm.status.reason) == (0, "Completed")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("how", ["guest-poweroff", "sigkill"], ids=["guest-poweroff", "sigkill"])
async def test_vm_that_died_while_unsupervised_is_reported(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver, how) -> None:
    vm_id = f"{vm_tag}-{how}"
    config = vm_config(tiny, tmp_path / vm_id, vm_id)
    cgroup = make_cgroup(cgroup_driver, vm_id)
    log = tmp_path / "orphan.log"
    child = _start_in_child(json.dumps(config.to_json()), tmp_path / vm_id, run_dir / vm_id, cgroup.path, log)
    child.kill()
    child.wait()
    pid = json.loads((tmp_path / vm_id / "vm-status.json").read_text())["pid"]
    process = psutil.Process(pid)
    if how == "sigkill":
        process.kill()
    else:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while tiny.ready_marker not in (tmp_path / vm_id / "console.raw").read_text(errors="replace"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        from qmprt.vm.agent import GuestAgent

        agent = GuestAgent(str(run_dir / vm_id / "qga.sock"))
        await agent.exec(["sh", "-c", "(sleep 0.3; poweroff) >/dev/null 2>&1 &"], timeout=20)
    deadline = time.monotonic() + 60
    while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "QEMU did not end"
        await asyncio.sleep(0.1)
    vm = await VM.adopt(tmp_path / vm_id, cgroup=cgroup_driver.open(cgroup.path), log_writer=CRILogWriter(log))
    vms.append(vm)
    status = vm.status
    assert status.state == VMState.EXITED
    assert "after a qmprt restart" in status.message
    if how == "sigkill":
        assert (status.exit_code, status.reason) == (255, "Error")
    else:
        assert (status.exit_code, status.reason) == (0, "Completed")
    await asyncio.sleep(0.2)
    assert not cgroup_driver.exists(cgroup.path)


async def test_operator_qmp_shell_is_seen_by_qmprt(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    """``qmprt qmp`` opens qmp-shell on the second monitor; qmprt's own monitor sees what it does."""
    vm = await boot(tiny, tmp_path, run_dir, vms, cgroup_driver, f"{vm_tag}-shell")

    async def shell(commands: bytes) -> str:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("qmprt")), "qmp", "--state-dir", str(tmp_path), vm.vm_id[:-2],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(commands), 30)
        assert process.returncode == 0, out
        return out.decode()

    assert '"status": "running"' in await shell(b"query-status\n")
    await shell(b"stop\n")
    await asyncio.sleep(0.3)
    assert vm.status.paused
    assert vm.monitor is not None and await vm.monitor.query_status() == "paused"
    await shell(b"cont\n")
    await asyncio.sleep(0.3)
    assert not vm.status.paused
    await vm.agent.ping()
    assert await vm.stop(grace=30) == ShutdownStep.POWERDOWN
