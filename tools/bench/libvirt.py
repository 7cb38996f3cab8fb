"""The libvirt path (how Virtlet and KubeVirt start VMs): Debian's libvirtd run by the benchmark itself.

libvirtd runs as root in a private mount namespace in which ``/etc/libvirt``, ``/var/lib/libvirt``,
``/var/cache/libvirt``, ``/var/log/libvirt`` and ``/run/libvirt`` are directories of this run, so it
reads only the configuration written here and leaves nothing on the host; it listens on a unix socket
in the temp dir only (no ``--listen``). qemu.conf turns off what this kind of machine lacks or refuses:
cgroup controllers (no systemd/machined), the security driver, QEMU's private /dev namespace, virtlogd.

Each run: a new overlay on the tiny guest's disk (before the clock), then ``virsh define`` + ``virsh
start`` of a domain with the same disks, memory, vCPUs and devices as qmprt's VM and its serial port
to a file, until the guest's ready marker is in that file. The first boot of a daemon (which probes
QEMU's capabilities) is timed apart as the cold start.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from xml.sax.saxutils import escape

from common import Daemon, OutputWatch, kill_processes_mentioning

from qmprt.image.overlay import create_overlay

PRIVATE_DIRS = {
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}

QEMU_CONF = """\
# Written by qmprt's benchmark for a private libvirtd.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""


def domain_xml(name: str, domain_type: str, memory_mib: int, cpus: int, overlay: Path, seed: Path, console: Path, qga: Path) -> str:
    """A domain with the devices of qmprt's VM: virtio-blk root + seed (serial cidata), the serial port
    to a file, virtio-serial with the guest agent's port, virtio-rng, balloon and pvpanic."""
    return f"""<domain type='{domain_type}'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{cpus}</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{escape(str(overlay))}'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='{escape(str(seed))}'/><target dev='vdb' bus='virtio'/>
      <readonly/><serial>cidata</serial>
    </disk>
    <serial type='file'><source path='{escape(str(console))}'/><target port='0'/></serial>
    <channel type='unix'>
      <source mode='bind' path='{escape(str(qga))}'/><target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <controller type='usb' model='none'/>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <panic model='isa'><address type='isa' iobase='0x505'/></panic>
  </devices>
</domain>
"""


class Libvirt:
    """A private libvirtd in ``directory`` and boots of the tiny guest through it."""

    def __init__(self, directory: Path, base: Path, seed: Path, marker: str, memory_mib: int, cpus: int, domain_type: str) -> None:
        self.directory = directory
        self.base = base
        self.marker = marker
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.domain_type = domain_type
        for name in (*PRIVATE_DIRS, "run", "sock", "vms"):
            (directory / name).mkdir(parents=True, exist_ok=True)
        self.seed = directory / "seed.iso"
        shutil.copyfile(seed, self.seed)
        self.socket = directory / "sock" / "libvirt-sock"
        self.uri = f"qemu:///system?socket={self.socket}"
        config = directory / "etc" / "libvirtd.conf"
        config.write_text(
            f'unix_sock_dir = "{directory / "sock"}"\nunix_sock_rw_perms = "0700"\nauth_unix_rw = "none"\n'
            f'auth_unix_ro = "none"\nlog_outputs = "3:file:{directory / "libvirtd.log"}"\n'
        )
        (directory / "etc" / "qemu.conf").write_text(QEMU_CONF)
        mounts = [f"mount --bind {directory / name} {target}" for name, target in PRIVATE_DIRS.items()]
        # /run is a fresh tmpfs in the namespace (no /run/libvirt on the host to bind over).
        mounts += ["mount -t tmpfs tmpfs /run", "mkdir /run/libvirt", f"mount --bind {directory / 'run'} /run/libvirt"]
        script = " && ".join([*mounts, f"exec libvirtd -f {config} -p {directory / 'libvirtd.pid'}"])
        self.daemon = Daemon("libvirtd", ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], directory / "daemon.log")
        self.cold_ms: float | None = None

    def virsh(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def version(self) -> str:
        """The daemon's version (``virsh version --daemon``: "Running against daemon: 9.0.0")."""
        for line in self.virsh("version", "--daemon").splitlines():
            if "daemon" in line:
                return line.split(":", 1)[1].strip()
        return ""

    def start(self) -> None:
        self.daemon.start(lambda: self.socket.exists() and bool(self.virsh("version", timeout=10)), timeout=60)
        self.cold_ms = self.one(-1)["total_ms"]

    def one(self, index: int, timeout: float = 180) -> dict[str, float]:
        name = f"qmprt-bench-{index}"
        vm_dir = self.directory / "vms" / name
        vm_dir.mkdir()
        overlay, console, xml = vm_dir / "overlay.qcow2", vm_dir / "console.log", vm_dir / "domain.xml"
        create_overlay(str(self.base), "qcow2", overlay)
        xml.write_text(domain_xml(name, self.domain_type, self.memory_mib, self.cpus, overlay, self.seed, console, vm_dir / "qga.sock"))
        watch = OutputWatch(console, self.marker).start()
        try:
            t0 = time.monotonic()
            self.virsh("define", str(xml))
            t1 = time.monotonic()
            self.virsh("start", name)
            t2 = time.monotonic()
            t3 = watch.wait(timeout)
        finally:
            watch.stop()
            with contextlib.suppress(Exception):
                self.virsh("destroy", name)
            with contextlib.suppress(Exception):
                self.virsh("undefine", name)
            shutil.rmtree(vm_dir, ignore_errors=True)
        return {
            "define_ms": (t1 - t0) * 1000,
            "start_ms": (t2 - t1) * 1000,
            "ready_ms": (t3 - t2) * 1000,
            "total_ms": (t3 - t0) * 1000,
        }

    def stop(self) -> None:
        """Domains destroyed, the daemon stopped by PID, any QEMU of this run killed, the dir removed."""
        if self.daemon.process is not None and self.daemon.process.poll() is None:
            with contextlib.suppress(Exception):
                for name in self.virsh("list", "--all", "--name", timeout=20).split():
                    with contextlib.suppress(Exception):
                        self.virsh("destroy", name, timeout=20)
                    with contextlib.suppress(Exception):
                        self.virsh("undefine", name, timeout=20)
        self.daemon.stop()
        kill_processes_mentioning(str(self.directory))
        shutil.rmtree(self.directory, ignore_errors=True)
