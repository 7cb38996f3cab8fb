"""qmprt's exec helper in the tiny guest, through ``vm.guest_exec``: streams, a pty, exit codes,
flow control under volume, many sessions, kills, a lost channel, TCP into the guest."""

from __future__ import annotations

import asyncio
import hashlib
import signal

from qmprt.vm import exec_protocol as proto
from qmprt.vm.guest_exec import ExecChannel, GuestProcess
from qmprt.vm.machine import VM

from .test_vm_engine import boot


async def output_of(process: GuestProcess) -> tuple[bytes, bytes]:
    streams = {"stdout": bytearray(), "stderr": bytearray()}
    while (item := await process.read()) is not None:
        streams[item[0]] += item[1]
    return bytes(streams["stdout"]), bytes(streams["stderr"])


async def started(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> VM:  # type: ignore[no-untyped-def]
    vm = await boot(tiny, tmp_path, run_dir, vms, cgroup_driver, f"{vm_tag}x")
    assert await vm.guest_exec.available(timeout=10)
    return vm


async def test_streams_exit_codes_and_a_terminal(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    vm = await started(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver)
    channel = vm.guest_exec
    cat = await channel.spawn(["cat"], stdin=True)
    await cat.write(b"hello\n" * 1000)
    await cat.close_stdin()
    assert await output_of(cat) == (b"hello\n" * 1000, b"")
    assert await cat.wait() == 0

    failing = await channel.spawn(["sh", "-c", "echo oops >&2; exit 3"], env=[("A", "1")], workdir="/tmp")
    assert await output_of(failing) == (b"", b"oops\n")
    assert await failing.wait() == 3
    missing = await channel.spawn(["no-such-command"])
    assert b"not found" in (await output_of(missing))[1]
    assert await missing.wait() == 127

    shell = await channel.spawn(["sh"], tty=True, stdin=True, rows=24, cols=80)
    await shell.write(b"stty size; exit\n")
    before = await channel.spawn(["true"])
    await before.wait()
    text = (await output_of(shell))[0]
    assert b"24 80" in text
    resized = await channel.spawn(["sh", "-c", "sleep 0.5; stty size"], tty=True, rows=10, cols=20)
    await resized.resize(50, 132)
    assert b"50 132" in (await output_of(resized))[0]
    assert await resized.wait() == 0

    sleeper = await channel.spawn(["sleep", "100"], tty=True, stdin=True)
    await asyncio.sleep(0.3)
    await sleeper.write(b"\x03")
    assert await asyncio.wait_for(sleeper.wait(), 10) == 130
    plain = await channel.spawn(["sleep", "100"])
    await plain.signal(signal.SIGTERM)
    assert await asyncio.wait_for(plain.wait(), 10) == 128 + signal.SIGTERM
    await vm.stop(grace=5)


async def test_64_mib_arrive_intact(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    vm = await started(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver)
    command = "exec 3>&1; dd if=/dev/urandom bs=1M count=64 2>/dev/null | tee /dev/fd/3 | sha256sum >&2"
    process = await vm.guest_exec.spawn(["sh", "-c", command])
    digest = hashlib.sha256()
    stderr = b""
    size = 0
    while (item := await process.read()) is not None:
        if item[0] == "stdout":
            digest.update(item[1])
            size += len(item[1])
        else:
            stderr += item[1]
    assert await process.wait() == 0
    assert size == 64 << 20
    assert stderr.split()[0].decode() == digest.hexdigest()
    await vm.stop(grace=5)


async def guest_pids(vm: VM, pattern: str) -> list[str]:
    result = await vm.agent.exec(["sh", "-c", f"ps -o pid,args | grep '[{pattern[0]}]{pattern[1:]}'"], timeout=20)
    return result.stdout.decode().split()


async def test_many_sessions_kill_and_a_lost_channel(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    vm = await started(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver)
    channel = vm.guest_exec

    async def one(index: int) -> bytes:
        process = await channel.spawn(["sh", "-c", f"echo session-{index}"])
        out, _ = await output_of(process)
        assert await process.wait() == 0
        return out

    outputs = await asyncio.gather(*(one(index) for index in range(50)))
    assert outputs == [f"session-{index}\n".encode() for index in range(50)]

    streaming = await channel.spawn(["sh", "-c", "while :; do echo tick-tock; sleep 0.05; done"])
    assert (await streaming.read()) is not None
    await streaming.kill()
    await streaming.kill()  # idempotent
    await asyncio.sleep(0.5)
    assert await guest_pids(vm, "tick-tock") == []

    held = await channel.spawn(["sh", "-c", "sleep 300 # held-session"])
    await channel.close()  # the old qmprt is gone...
    assert await held.read() is None
    # Nobody on the host side: the helper waits without spinning (virtio-serial reads return 0 now).
    ticks = "set -- $(cat /proc/$(pidof qmprt-exec)/stat); echo $((${14} + ${15}))"
    before = int((await vm.agent.exec(["sh", "-c", ticks], timeout=20)).stdout)
    await asyncio.sleep(2)
    after = int((await vm.agent.exec(["sh", "-c", ticks], timeout=20)).stdout)
    assert after - before < 40, f"the helper used {after - before} ticks in 2 s while disconnected"
    fresh = ExecChannel(str(vm.exec_socket))
    assert await fresh.available(timeout=10)  # ...and a new one's HELLO ends what it left
    await asyncio.sleep(0.5)
    assert await guest_pids(vm, "held-session") == []
    await fresh.close()
    await vm.stop(grace=5)


async def test_tcp_into_the_guest(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver) -> None:
    vm = await started(tiny, tmp_path, run_dir, vms, vm_tag, cgroup_driver)
    await vm.agent.exec(["sh", "-c", "mkdir -p /tmp/www && echo served > /tmp/www/index.html && "
                         "httpd -p 8080 -h /tmp/www"], timeout=20)
    stream = await vm.guest_exec.connect_tcp(8080)
    await stream.write(b"GET /index.html HTTP/1.0\r\n\r\n")
    reply = b""
    while chunk := await stream.read():
        reply += chunk
    assert reply.startswith(b"HTTP/1.") and reply.endswith(b"served\n")
    await stream.close()
    # Frames the helper cannot use are refused, and it carries on.
    writer = vm.guest_exec._writer
    assert writer is not None
    writer.write(proto.frame(77, 1, b"?") + proto.HEADER.pack(proto.STDIN, 2, 70000) + b"\0" * 70000)
    writer.write(proto.frame(proto.SPAWN, 3, b"\1"))
    still = await vm.guest_exec.spawn(["echo", "still here"])
    assert (await output_of(still))[0] == b"still here\n"
    try:
        await vm.guest_exec.connect_tcp(8081)
    except Exception as err:  # noqa: BLE001 - the type is what is checked
        assert "connect" in str(err)
    else:
        raise AssertionError("a closed port must not connect")
    await vm.stop(grace=5)
