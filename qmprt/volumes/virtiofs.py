"""virtiofs: a host directory shared with the guest through virtiofsd (vhost-user, no kernel vhost).

``VirtiofsShare`` describes one share and renders both sides: virtiofsd's argv and QEMU's
``-chardev socket,path=…`` + ``-device vhost-user-fs-pci`` (``-device`` for MMIO). ``VirtiofsDaemon``
runs and stops virtiofsd and re-adopts it after a qmprt restart from the JSON it gave (``to_json``).

What this machine's virtiofsd (the C one of QEMU 7.2, ``/usr/lib/qemu/virtiofsd``) can and cannot do,
and what qmprt does about it:

- It has no read-only option (``--help`` lists no ``-o ro``; the Rust virtiofsd's ``--readonly``
  came later). A read-only share therefore runs virtiofsd in a mount namespace of its own
  (``unshare --mount``) on a read-only bind mount of the directory onto itself: the host refuses
  every write (EROFS) whatever the guest does. Nothing is mounted in the host's namespace. The guest
  also mounts it ``ro`` (``qmprt.cloudinit.SeedMount``), so writes fail early there.
- It takes a listening socket as ``--fd``: qmprt creates the socket at ``socket_path`` (0600), passes
  it, and closes its own copy once virtiofsd runs, so if virtiofsd dies, QEMU's connect to the path
  fails at once instead of waiting in the backlog.
- It serves one connection and exits when the VM does: each start of a VM needs a fresh daemon.
  After the VM connects, the default ``sandbox=namespace`` forks once into new pid/net/mount
  namespaces; the recorded pid waits for that child, which dies with it (PR_SET_PDEATHSIG).
- The VM needs shared guest RAM (``VMConfig.shared_memory``): vhost-user maps the guest's memory.
- virtiofsd runs as root: in a writable share, the guest's root can create files of any owner
  (setuid ones included) inside the shared directory. Share writable directories only when that is
  acceptable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from qmprt.osutil import MAX_SOCKET_PATH, listening_unix_socket
from qmprt.errors import DeadlineExceeded, FailedPrecondition, InternalError, InvalidArgument
from qmprt.virtio import Transport
from qmprt.volumes.block import QMPCommand, virtio_driver

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
READY_LINE = b"Waiting for vhost-user socket connection"
TAG_MAX = 36  # bytes of the tag in virtio-fs's config space

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,15}")
_TAG = re.compile(rf"[A-Za-z0-9_.-]{{1,{TAG_MAX}}}")
# Runs in virtiofsd's own mount namespace (unshare): "$0" is the shared directory.
_READ_ONLY_BIND = 'mount -o bind,ro -- "$0" "$0" && exec "$@"'

CacheMode = Literal["auto", "always", "none"]


def virtiofs_unavailable(binary: str = VIRTIOFSD) -> str | None:
    """Why virtiofs shares cannot work on this host (deliver files with ``write_files`` then), or ``None``."""
    if not os.access(binary, os.X_OK):
        return f"{binary} is missing (Debian package qemu-system-common)"
    return None


def _keyval(value: str) -> str:
    return value.replace(",", ",,")


@dataclass(frozen=True)
class VirtiofsShare:
    """``source`` (a host directory) shared as ``tag``; ``name`` (``[a-z0-9-]``, ≤ 16) makes the QEMU ids."""

    name: str
    tag: str
    source: str
    socket_path: str
    read_only: bool = True
    cache: CacheMode = "auto"
    binary: str = VIRTIOFSD

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise InvalidArgument(f"share name {self.name!r} must be 1-16 of a-z, 0-9, '-' (not first)")
        if not _TAG.fullmatch(self.tag):
            raise InvalidArgument(f"share tag {self.tag!r} must be 1-{TAG_MAX} of letters, digits, '_', '.', '-'")
        if not os.path.isabs(self.source):
            raise InvalidArgument(f"share {self.name}: source {self.source!r} is not an absolute path")
        if not os.path.isabs(self.socket_path) or len(self.socket_path.encode()) > MAX_SOCKET_PATH:
            raise InvalidArgument(
                f"share {self.name}: socket path {self.socket_path!r} must be absolute and at most"
                f" {MAX_SOCKET_PATH} bytes"
            )
        if self.cache not in ("auto", "always", "none"):
            raise InvalidArgument(f"share {self.name}: cache {self.cache!r} must be auto, always or none")

    @property
    def chardev_id(self) -> str:
        return f"fs-{self.name}"

    @property
    def device_id(self) -> str:
        return f"fs-{self.name}-dev"

    def daemon_argv(self, fd: int) -> list[str]:
        """virtiofsd serving the listening socket ``fd`` (read-only shares: in a read-only bind)."""
        argv = [self.binary, f"--fd={fd}", "-o", f"source={self.source}", "-o", f"cache={self.cache}"]
        if not self.read_only:
            return argv
        return ["unshare", "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", _READ_ONLY_BIND, self.source, *argv]

    def device(self, transport: Transport) -> dict[str, Any]:
        return {
            "driver": virtio_driver("vhost-user-fs", transport), "id": self.device_id,
            "chardev": self.chardev_id, "tag": self.tag,
        }

    def args(self, transport: Transport) -> list[str]:
        """QEMU's side. The VM needs ``shared_memory`` (vhost-user maps guest RAM)."""
        chardev = f"socket,id={self.chardev_id},path={_keyval(self.socket_path)}"
        return ["-chardev", chardev, "-device", json.dumps(self.device(transport), separators=(",", ":"))]

    def qmp_args(self, transport: Transport) -> list[QMPCommand]:
        """Hot-plug: ``chardev-add`` (a client of the socket), then ``device_add``."""
        backend = {
            "type": "socket",
            "data": {"addr": {"type": "unix", "data": {"path": self.socket_path}}, "server": False},
        }
        return [("chardev-add", {"id": self.chardev_id, "backend": backend}), ("device_add", self.device(transport))]


@dataclass(frozen=True)
class VirtiofsShares:
    """All of one VM's shares as one device of its command line (``VMConfig.extra_devices``), names
    and tags unique. The VM needs ``shared_memory``."""

    shares: tuple[VirtiofsShare, ...]
    transport: Transport

    def __post_init__(self) -> None:
        for what, values in (("names", [s.name for s in self.shares]), ("tags", [s.tag for s in self.shares])):
            if len(set(values)) != len(values):
                raise InvalidArgument(f"share {what} are not unique: {values}")

    def args(self) -> list[str]:
        return [arg for share in self.shares for arg in share.args(self.transport)]


def _tail(path: str, limit: int = 600) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - limit))
            return log.read().decode(errors="replace").strip()
    except OSError:
        return ""


class VirtiofsDaemon:
    """One virtiofsd. Create with ``start`` or ``adopt``; persist ``to_json()`` to adopt it later."""

    def __init__(
        self, share: VirtiofsShare, pid: int, create_time: float, log_path: str,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.share = share
        self.pid = pid
        self.create_time = create_time
        self.log_path = log_path
        self._popen = popen

    @classmethod
    async def start(
        cls, share: VirtiofsShare, log_path: str | os.PathLike[str], *,
        exec_prefix: Sequence[str] = (), ready_timeout: float = 10.0,
    ) -> VirtiofsDaemon:
        """Start virtiofsd for ``share`` (inside ``exec_prefix``, e.g. a cgroup's ``exec_prefix()``) and
        wait until it listens. On failure nothing is left running and the socket is removed."""
        reason = virtiofs_unavailable(share.binary)
        if reason is not None:
            raise FailedPrecondition(f"virtiofs share {share.name}: {reason}")
        if not os.path.isdir(share.source):
            raise InvalidArgument(f"virtiofs share {share.name}: {share.source} is not a directory")
        log = os.fspath(log_path)
        sock = listening_unix_socket(share.socket_path, backlog=1)
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            popen = subprocess.Popen(
                [*exec_prefix, *share.daemon_argv(sock.fileno())],
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                pass_fds=[sock.fileno()], start_new_session=True,
            )
        except OSError as err:
            Path(share.socket_path).unlink(missing_ok=True)
            raise InternalError(f"virtiofs share {share.name}: cannot run virtiofsd: {err}") from err
        finally:
            sock.close()
            os.close(log_fd)
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = time.time()
        daemon = cls(share, popen.pid, create_time, log, popen)
        try:
            await daemon._wait_ready(ready_timeout)
        except BaseException:
            await daemon.stop()
            raise
        return daemon

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if READY_LINE in Path(self.log_path).read_bytes():
                    return
            if self._popen is not None and self._popen.poll() is not None:
                raise InternalError(
                    f"virtiofs share {self.share.name}: virtiofsd exited with {self._popen.returncode}:"
                    f" {_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"virtiofs share {self.share.name}: virtiofsd not ready in {timeout} s")
            await asyncio.sleep(0.01)

    def to_json(self) -> dict[str, Any]:
        return {
            "share": dataclasses.asdict(self.share), "pid": self.pid,
            "create_time": self.create_time, "log_path": self.log_path,
        }

    @classmethod
    def adopt(cls, document: dict[str, Any]) -> VirtiofsDaemon:
        """The daemon ``to_json`` described, running or not (``running`` says which)."""
        return cls(VirtiofsShare(**document["share"]), int(document["pid"]),
                   float(document["create_time"]), str(document["log_path"]))

    def _process(self) -> psutil.Process | None:
        """The live process if it is still this virtiofsd (not a reused pid)."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > 0.05 or process.status() == psutil.STATUS_ZOMBIE:
                return None
            if f"source={self.share.source}" not in process.cmdline():
                return None
            return process
        except psutil.Error:
            return None

    @property
    def running(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return self._process() is not None

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; remove the socket. Stopping a stopped daemon does nothing."""
        process = self._process()
        if process is not None:
            with contextlib.suppress(psutil.Error):
                process.terminate()
            gone, alive = await asyncio.to_thread(psutil.wait_procs, [process], timeout)
            for survivor in alive:
                with contextlib.suppress(psutil.Error):
                    survivor.kill()
        if self._popen is not None:
            await asyncio.to_thread(self._popen.wait)
        Path(self.share.socket_path).unlink(missing_ok=True)
