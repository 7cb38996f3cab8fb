"""A pod's QEMU drops root once it has opened what it needs: its own uid, no capabilities, chrooted
to the container's directory, QEMU's seccomp filter on; the guest still boots, answers exec, reboots."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from qmprt.pod.states import ContainerState

from .pods import container_spec, open_runtime, sandbox_spec, wait_for_log


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


async def count_in_log(path: str, text: str, count: int, timeout: float = 120) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if Path(path).read_text(errors="replace").count(text) >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{text!r} not {count} times in {path} after {timeout} s")


async def test_qemu_runs_unprivileged_in_its_directory(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    state_dir, run_dir, cni_dir = runtime_dirs
    runtime = await open_runtime(tiny, state_dir, run_dir, cni_dir)
    runtimes.append(runtime)
    first = await runtime.run_sandbox(sandbox_spec(tmp_path, "first"))
    second = await runtime.run_sandbox(sandbox_spec(tmp_path, "second"))
    container_id = await runtime.create_container(first, container_spec())
    other_id = await runtime.create_container(second, container_spec())
    uid = runtime.containers[container_id].record.vm_uid
    other_uid = runtime.containers[other_id].record.vm_uid
    assert uid is not None and other_uid is not None and uid != other_uid
    assert runtime.config.vm.uid_base <= min(uid, other_uid)

    await runtime.start_container(container_id)
    container = runtime.containers[container_id]
    await wait_for_log(container.record.log_path, tiny.ready_marker)
    assert container.vm is not None and container.vm.status.pid is not None
    pid = container.vm.status.pid
    status = proc_status(pid)
    assert status["Uid"].split() == [str(uid)] * 4
    assert status["Gid"].split() == [str(uid)] * 4
    assert status["Groups"].split() == [str(uid)]
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == int(status["CapAmb"], 16) == 0
    assert status["Seccomp"] == "2"
    assert os.readlink(f"/proc/{pid}/root") == str(container.directory.resolve())
    # Nothing in its directory is readable to it (0700 root), so the chroot holds no files for it.
    assert os.stat(container.directory).st_mode & 0o077 == 0 and os.stat(container.directory).st_uid == 0

    # It still serves the guest: exec through the agent, the console, and a reboot (the reset reloads
    # firmware and kernel from memory, not from files it can no longer open).
    result = await runtime.exec_sync(container_id, ["id", "-u"], 30)
    assert (result.exit_code, result.stdout.strip()) == (0, b"0")
    await runtime.exec_sync(container_id, ["sh", "-c", "(sleep 1; reboot -f) >/dev/null 2>&1 &"], 30)
    await count_in_log(container.record.log_path, tiny.ready_marker, 2)
    assert runtime.container(container_id).status.state == ContainerState.RUNNING
    assert container.vm.status.pid == pid
    result = await runtime.exec_sync(container_id, ["true"], 30)
    assert result.exit_code == 0

    await runtime.stop_container(container_id, 10)
    assert runtime.container(container_id).status.state == ContainerState.EXITED
    await runtime.remove_sandbox(first)
    await runtime.remove_sandbox(second)


async def test_root_stays_when_configured(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    state_dir, run_dir, cni_dir = runtime_dirs
    runtime = await open_runtime(tiny, state_dir, run_dir, cni_dir, unprivileged=False)
    runtimes.append(runtime)
    sandbox_id = await runtime.run_sandbox(sandbox_spec(tmp_path))
    container_id = await runtime.create_container(sandbox_id, container_spec())
    assert runtime.containers[container_id].record.vm_uid is None
    await runtime.start_container(container_id)
    container = runtime.containers[container_id]
    assert container.vm is not None and container.vm.status.pid is not None
    assert proc_status(container.vm.status.pid)["Uid"].split()[0] == "0"
    argv = Path(f"/proc/{container.vm.status.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-runas" not in argv and b"-chroot" not in argv
    assert re.search(rb"elevateprivileges=deny", b" ".join(argv))
    await runtime.remove_sandbox(sandbox_id)
