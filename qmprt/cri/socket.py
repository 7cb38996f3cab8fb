"""Ownership of a CRI socket path, for every server qmprt runs (``qmprt serve``, ``qmprt proxy``).

A ``<socket>.lock`` file held with ``flock`` for the server's lifetime keeps two instances apart; a
probe connection finds any other live server (a containerd, an old qmprt) before a stale socket file
is removed. The socket is 0660 in a directory created 0750, so only root and the socket's group
reach it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import stat
from pathlib import Path

from qmprt.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o750
MAX_UNIX_PATH = 107


def socket_path(address: str) -> str:
    """``unix:///run/x.sock`` or ``/run/x.sock`` → ``/run/x.sock``."""
    path = address.removeprefix("unix://")
    if not os.path.isabs(path):
        raise InvalidArgument(f"the CRI socket {address!r} must be an absolute unix socket path")
    if len(path.encode()) > MAX_UNIX_PATH:
        raise InvalidArgument(f"the CRI socket path {path!r} is longer than {MAX_UNIX_PATH} bytes")
    return path


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class SocketClaim:
    """The right to serve on one socket path; ``release`` gives it back."""

    def __init__(self, path: str) -> None:
        self.path = socket_path(path)
        self._inode: int | None = None
        directory = Path(self.path).parent
        if not directory.exists():
            directory.mkdir(parents=True, mode=SOCKET_DIR_MODE)
            directory.chmod(SOCKET_DIR_MODE)  # mkdir's mode is masked by the umask
        elif directory.stat().st_mode & 0o002:
            log.warning("the CRI socket's directory %s is world-writable", directory)
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._lock_fd)
            raise FailedPrecondition(f"another qmprt serves on {self.path} (it holds {self.path}.lock)") from err
        try:
            self._clear_stale()
        except BaseException:
            self.release()
            raise

    def _clear_stale(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise FailedPrecondition(f"{self.path} exists and is not a socket; qmprt will not replace it")
        if _answers(self.path):
            raise FailedPrecondition(f"another server is listening on {self.path}")
        log.info("removing the stale socket %s", self.path)
        os.unlink(self.path)

    def bound(self) -> None:
        """The server listens now: restrict the socket and remember which file is ours."""
        os.chmod(self.path, SOCKET_MODE)
        self._inode = os.lstat(self.path).st_ino

    def release(self) -> None:
        if self._lock_fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            if self._inode is not None and os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        # The lock file stays: unlinking it would let two later starters lock different inodes.
        os.close(self._lock_fd)
        self._lock_fd = -1

