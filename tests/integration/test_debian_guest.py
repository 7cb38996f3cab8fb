"""A real cloud-init guest (the debootstrapped ``debian`` image) reads qmprt's seed as the tiny one does.

Slow: the image builds once per recipe (about 90 s, cached) and cloud-init needs about a minute
under TCG. It runs in CI all the same (the whole suite stays far inside CI's budget).
"""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from qmprt.errors import QmprtError

from .guests import ROOT
from .pods import container_spec, open_runtime, sandbox_spec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqmprtDebianKeyOnlyForTests000000000000000 ops@example"
HOSTILE = "it's $HOME \"quoted\"\nline two ✓"
CLOUD_INIT_TIMEOUT = 300


@pytest.mark.slow
async def test_real_cloud_init_applies_the_seed(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    subprocess.run(["bash", str(ROOT / "images" / "build-debian.sh")], check=True, capture_output=True)
    disk = (ROOT / "images" / "out" / "debian" / "debian.qcow2").resolve()
    state_dir, run_dir, cni_dir = runtime_dirs
    # No memory limit: a cloud-init guest under TCG needs far more emulator memory than the tiny one.
    runtime = await open_runtime(tiny, state_dir, run_dir, cni_dir, memory_mib=512)
    runtimes.append(runtime)
    runtime.images.import_file(disk, "debian")
    sandbox_id = await runtime.run_sandbox(sandbox_spec(tmp_path, "real-ci"))
    container_id = await runtime.create_container(
        sandbox_id,
        container_spec(image="debian", envs=(("HOSTILE", HOSTILE),), annotations={"qmprt.io/ssh-authorized-keys": KEY}),
    )
    await runtime.start_container(container_id)

    deadline = asyncio.get_running_loop().time() + CLOUD_INIT_TIMEOUT
    while True:
        try:
            done = await runtime.exec_sync(container_id, ["cloud-init", "status", "--wait"], 60)
            if done.exit_code in (0, 2):  # 2: finished with recoverable errors (e.g. no network here)
                break
        except QmprtError:
            pass  # the agent is not up yet
        assert asyncio.get_running_loop().time() < deadline, "cloud-init did not finish"
        await asyncio.sleep(2)

    async def guest(script: str) -> str:
        result = await runtime.exec_sync(container_id, ["sh", "-c", script], 60)
        return result.stdout.decode()

    assert (await guest("hostname")).strip() == "real-ci-host"
    assert await guest('. /etc/cloud/environment; printf %s "$HOSTILE"') == HOSTILE
    assert KEY in await guest("cat /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys 2>/dev/null")
    # The exec helper came with the seed (runcmd started it): a terminal session through it.
    vm = runtime.registry.container(container_id).vm
    assert vm is not None and await vm.guest_exec.available(timeout=10)
    process = await vm.guest_exec.spawn(["sh", "-c", "tty; stty size"], tty=True, rows=33, cols=99)
    output = b""
    while (item := await process.read()) is not None:
        output += item[1]
    assert await process.wait() == 0
    assert b"/dev/pts/" in output and b"33 99" in output
    assert "/usr/local/lib/qmprt/qmprt-exec" in await guest("cat /proc/$(pidof qmprt-exec)/cmdline | tr '\\0' ' '")
    await runtime.remove_sandbox(sandbox_id)
