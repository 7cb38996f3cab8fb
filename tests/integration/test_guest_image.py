"""The tiny guest image boots and keeps its contract, on plain QEMU command lines built here.

Independent of qmprt/vm/ on purpose: this pins down the image (images/build-tiny.sh) and the seed
writer (qmprt/cloudinit/) against QEMU itself. Each boot mode: the ready marker within 60 s, hostname
and a hostile environment value read back through the guest agent, the static addresses of
network-config on a NIC (a hub port with no host side: nothing leaves the machine), the seed's
command output on the console, and QMP system_powerdown making QEMU exit 0 within 15 s. One more boot
checks that a guest panic reaches QEMU as GUEST_PANICKED (pvpanic).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from qmprt.cloudinit import READY_MARKER, NetworkInterface, SeedSpec, write_nocloud_iso

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "images" / "build-tiny.sh"
TINY = ROOT / "images" / "out" / "tiny"
QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"

READY_TIMEOUT = 60.0
POWERDOWN_TIMEOUT = 15.0
AGENT_PORT = "org.qemu.guest_agent.0"
MAC = "52:54:00:51:7e:01"

HOSTILE_VALUE = "it's \"quoted\" \\ $HOME ${X} $(id) `id`\nsecond line ünïcödé ✓ 🚀\t'"
MODES = {
    # id: (machine, direct kernel boot, kernel file)
    "q35-disk": ("q35", False, None),
    "q35-direct": ("q35", True, "vmlinuz"),
    "microvm-direct": ("microvm", True, "vmlinux"),
}


@dataclass(frozen=True)
class Tiny:
    directory: Path
    manifest: dict[str, Any]

    def file(self, key: str) -> Path | None:
        name = self.manifest["files"].get(key)
        return self.directory / name if name else None


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True)
    directory = TINY.resolve()
    return Tiny(directory, json.loads((directory / "manifest.json").read_text()))


@pytest.fixture
def sockets_dir() -> Iterator[Path]:
    """Short enough for unix socket paths (pytest's tmp_path may not be)."""
    path = Path(tempfile.mkdtemp(prefix="qmprt-gi-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def host_tsc_khz() -> int:
    """The host's TSC rate, which is also the guest's under TCG (microvm has no timer to calibrate
    against, so the kernel is told)."""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("cpu MHz"):
                return round(float(line.split(":")[1]) * 1000)
    raise RuntimeError("no 'cpu MHz' in /proc/cpuinfo")


def qemu_argv(tiny: Tiny, mode: str, overlay: Path, seed: Path, sockets: Path, console: Path) -> list[str]:
    machine, direct, kernel_key = MODES[mode]
    bus = "device" if machine == "microvm" else "pci"
    argv = [
        QEMU, "-name", f"guest=tiny-image-{mode}", "-machine", machine, "-accel", "tcg", "-m", "128",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}",
        "-qmp", f"unix:{sockets / 'qmp.sock'},server=on,wait=off",
        "-drive", f"if=none,id=root,file={overlay},format=qcow2",
        "-device", f"virtio-blk-{bus},drive=root" + ("" if direct else ",bootindex=1"),
        "-drive", f"if=none,id=seed,file={seed},format=raw,readonly=on",
        "-device", f"virtio-blk-{bus},drive=seed,serial=cidata",
        "-netdev", "hubport,id=net0,hubid=0",
        "-device", f"virtio-net-{bus},netdev=net0,mac={MAC}",
        "-chardev", f"socket,id=qga,path={sockets / 'qga.sock'},server=on,wait=off",
        "-device", f"virtio-serial-{bus}",
        "-device", f"virtserialport,chardev=qga,name={AGENT_PORT}",
        "-device", "pvpanic",
    ]
    if direct:
        kernel = tiny.file(kernel_key or "vmlinuz") or tiny.file("vmlinuz")
        initrd = tiny.file("initrd")
        assert kernel is not None and initrd is not None
        append = tiny.manifest["cmdline"]
        if machine == "microvm":
            append += f" tsc_early_khz={host_tsc_khz()}"
        argv += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", append]
    return argv


class GuestAgent:
    """Just enough of the qemu-guest-agent protocol: guest-sync-delimited, guest-exec(-status)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, path: Path, timeout: float) -> GuestAgent:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path), limit=1 << 24), timeout)
        agent = cls(reader, writer)
        deadline = time.monotonic() + timeout
        while not await agent._sync(attempt_timeout=2.0):
            if time.monotonic() > deadline:
                raise TimeoutError("the guest agent did not answer guest-sync-delimited")
        return agent

    async def _send(self, command: str, arguments: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        self.writer.write(json.dumps(message).encode() + b"\n")
        await self.writer.drain()

    async def _sync(self, attempt_timeout: float) -> bool:
        # The agent answers with 0xFF before the reply; anything earlier is stale and skipped.
        sync_id = secrets.randbelow(1 << 31)
        await self._send("guest-sync-delimited", {"id": sync_id})
        try:
            async with asyncio.timeout(attempt_timeout):
                while True:
                    await self.reader.readuntil(b"\xff")
                    reply = json.loads(await self.reader.readline())
                    if reply.get("return") == sync_id:
                        return True
        except TimeoutError:
            return False

    async def send(self, command: str, arguments: dict[str, Any] | None = None) -> None:
        """Send without reading the reply (for a command that takes the guest down)."""
        await self._send(command, arguments)

    async def call(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        await self._send(command, arguments)
        async with asyncio.timeout(timeout):
            reply = json.loads(await self.reader.readline())
        if "error" in reply:
            raise RuntimeError(f"{command}: {reply['error']}")
        return reply["return"]

    async def run(self, *argv: str, timeout: float = 20.0) -> tuple[int, bytes, bytes]:
        started = await self.call("guest-exec", {"path": argv[0], "arg": list(argv[1:]), "capture-output": True})
        deadline = time.monotonic() + timeout
        while True:
            status = await self.call("guest-exec-status", {"pid": started["pid"]})
            if status["exited"]:
                return (
                    status.get("exitcode", -1),
                    base64.b64decode(status.get("out-data", "")),
                    base64.b64decode(status.get("err-data", "")),
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv} did not finish in {timeout} s")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass
class Booted:
    process: asyncio.subprocess.Process
    console: Path
    sockets: Path
    boot_seconds: float


@contextlib.asynccontextmanager
async def booted(tiny: Tiny, mode: str, seed_spec: SeedSpec, tmp_path: Path, sockets: Path) -> AsyncIterator[Booted]:
    """QEMU booting the tiny guest in ``mode``, until the ready marker; always killed afterwards."""
    overlay = tmp_path / "overlay.qcow2"
    disk = tiny.file("disk")
    assert disk is not None
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk), str(overlay)], check=True
    )
    seed = tmp_path / "seed.iso"
    write_nocloud_iso(seed_spec, seed)
    console = tmp_path / "console.log"
    argv = qemu_argv(tiny, mode, overlay, seed, sockets, console)
    started = time.monotonic()
    with open(tmp_path / "qemu.stderr", "wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        while READY_MARKER.encode() not in (console.read_bytes() if console.exists() else b""):
            if process.returncode is not None:
                pytest.fail(f"QEMU exited ({process.returncode}) before the guest was ready:\n{_tail(tmp_path)}")
            if time.monotonic() - started > READY_TIMEOUT:
                pytest.fail(f"no ready marker within {READY_TIMEOUT} s:\n{_tail(tmp_path)}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.05)
        yield Booted(process, console, sockets, time.monotonic() - started)
    finally:
        if process.returncode is None:
            os.kill(process.pid, 9)
            await process.wait()


async def _disconnect(qmp: QMPClient) -> None:
    # QEMU has usually exited by now: the client reports the lost connection, which is expected.
    with contextlib.suppress(EOFError, OSError):
        await qmp.disconnect()


def _tail(tmp_path: Path) -> str:
    console = tmp_path / "console.log"
    stderr = tmp_path / "qemu.stderr"
    text = console.read_text(errors="replace")[-3000:] if console.exists() else "(no console output)"
    return text + "\n--- qemu stderr ---\n" + (stderr.read_text(errors="replace") if stderr.exists() else "")


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
async def test_boot_seed_agent_network_powerdown(tiny: Tiny, tmp_path: Path, sockets_dir: Path, mode: str) -> None:
    hostname = f"tiny-{mode}"
    spec = SeedSpec(
        instance_id=f"test-{mode}-{secrets.token_hex(4)}",
        hostname=hostname,
        env={"HOSTILE": HOSTILE_VALUE, "GREETING": "hello from the seed"},
        command=("/bin/sh", "-c", 'echo "command says: $GREETING"'),
        interfaces=(
            NetworkInterface(
                mac=MAC, name="eth0", addresses=("192.168.77.2/24", "fd77::2/64"),
                gateway4="192.168.77.1", gateway6=None, routes=(), mtu=1400,
            ),
        ),
    )
    async with booted(tiny, mode, spec, tmp_path, sockets_dir) as vm:
        print(f"{mode}: ready after {vm.boot_seconds:.2f} s")
        console = vm.console.read_bytes()
        assert console.count(READY_MARKER.encode()) == 1

        agent = await GuestAgent.connect(sockets_dir / "qga.sock", timeout=15)
        try:
            assert await agent.run("cat", "/etc/hostname") == (0, f"{hostname}\n".encode(), b"")
            code, uname, _ = await agent.run("uname", "-r")
            assert code == 0 and uname.decode().strip() == tiny.manifest["kernel_version"]
            code, value, _ = await agent.run("/bin/sh", "-c", '. /etc/cloud/environment; printf %s "$HOSTILE"')
            assert code == 0 and value == HOSTILE_VALUE.encode()
            code, addresses, _ = await agent.run("ip", "-o", "addr")
            assert code == 0
            assert b"eth0    inet 192.168.77.2/24" in addresses and b"inet6 fd77::2/64" in addresses
            code, routes, _ = await agent.run("ip", "route")
            assert b"default via 192.168.77.1 dev eth0" in routes
            assert (await agent.run("nproc"))[1] == b"1\n"
        finally:
            await agent.close()

        deadline = time.monotonic() + 10
        while b"command says: hello from the seed" not in vm.console.read_bytes():
            assert time.monotonic() < deadline, "the seed's command did not print on the console"
            await asyncio.sleep(0.1)

        qmp = QMPClient(f"tiny-{mode}")
        await qmp.connect(str(sockets_dir / "qmp.sock"))
        try:
            powerdown_sent = time.monotonic()
            await qmp.execute("system_powerdown")
            returncode = await asyncio.wait_for(vm.process.wait(), POWERDOWN_TIMEOUT)
            print(f"{mode}: QEMU exited {time.monotonic() - powerdown_sent:.2f} s after system_powerdown")
        finally:
            await _disconnect(qmp)
        assert returncode == 0


async def test_panic_reaches_qemu_through_pvpanic(tiny: Tiny, tmp_path: Path, sockets_dir: Path) -> None:
    spec = SeedSpec(instance_id=f"test-panic-{secrets.token_hex(4)}", hostname="panicky")
    async with booted(tiny, "microvm-direct", spec, tmp_path, sockets_dir) as vm:
        qmp = QMPClient("tiny-panic")
        await qmp.connect(str(sockets_dir / "qmp.sock"))
        events: list[str] = []
        try:
            with qmp.listener() as listener:
                agent = await GuestAgent.connect(sockets_dir / "qga.sock", timeout=15)
                try:
                    # The agent dies with the kernel: do not wait for the command's status.
                    await agent.send("guest-exec", {"path": "/bin/sh", "arg": ["-c", "echo c > /proc/sysrq-trigger"]})
                finally:
                    await agent.close()
                async with asyncio.timeout(15):
                    async for event in listener:
                        events.append(str(event["event"]))
                        if event["event"] == "GUEST_PANICKED":
                            break
        finally:
            await _disconnect(qmp)
        await asyncio.wait_for(vm.process.wait(), 15)
    assert "GUEST_PANICKED" in events
