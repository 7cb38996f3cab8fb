"""Network namespaces of sandboxes, named ``qmprt-<sandbox id prefix>`` under /var/run/netns.

The standard location means ``ip netns exec`` works on them for debugging, and CNI plugins get an
ordinary path.

Creation does not fork: a fork of a process running gRPC's threads is fragile. Instead a throwaway
thread unshares its own network namespace, bind-mounts it onto the namespace file, and ends; the
thread is never reused, so even a failed switch back cannot leak the namespace into other work.
Removal is a lazy unmount and an unlink (pyroute2).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import netns as pyroute2_netns

from qmprt.errors import InternalError

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
MS_BIND = 4096

_libc = ctypes.CDLL(None, use_errno=True)


def netns_name(sandbox_id: str) -> str:
    return f"qmprt-{sandbox_id[:16]}"


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def _unshare_and_pin(path: Path, outcome: list[BaseException | None]) -> None:
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"unshare(CLONE_NEWNET): {os.strerror(code)}")
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        if _libc.mount(source, str(path).encode(), None, MS_BIND, None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"bind-mount of the new namespace: {os.strerror(code)}")
        outcome.append(None)
    except BaseException as err:
        outcome.append(err)


def create(name: str) -> Path:
    path = netns_path(name)
    NETNS_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except FileExistsError as err:
        raise InternalError(f"network namespace {name} already exists") from err
    os.close(fd)
    outcome: list[BaseException | None] = []
    worker = threading.Thread(target=_unshare_and_pin, args=(path, outcome), name=f"netns-{name}")
    worker.start()
    worker.join()
    if outcome and outcome[0] is None:
        return path
    path.unlink(missing_ok=True)
    raise InternalError(f"cannot create network namespace {name}: {outcome[0] if outcome else 'no result'}")


def exists(name: str) -> bool:
    path = netns_path(name)
    return path.exists() and os.path.ismount(path)


def remove(name: str) -> None:
    """Remove the namespace; idempotent."""
    path = netns_path(name)
    if not path.exists():
        return
    try:
        pyroute2_netns.remove(name)
    except OSError as err:
        if err.errno == errno.EINVAL and path.exists():
            path.unlink(missing_ok=True)  # a file that was never mounted on
        elif path.exists():
            raise InternalError(f"cannot remove network namespace {name}: {err}") from err


T = TypeVar("T")


def _enter_and_call(path: str, function: Callable[[], T], outcome: list[tuple[bool, Any]]) -> None:
    try:
        with open(path, "rb") as handle:
            if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"setns({path}): {os.strerror(code)}")
        outcome.append((True, function()))
    except BaseException as err:
        outcome.append((False, err))


def run_in(path: str | os.PathLike[str], function: Callable[[], T]) -> T:
    """``function()`` called in the network namespace at ``path``, in a throwaway thread.

    Sockets (netlink, AF_PACKET) and tun/tap fds opened by ``function`` stay bound to that namespace
    after the thread ends, so they can be handed to the event loop or to QEMU. The thread is never
    reused, so the namespace switch cannot leak into other work. Exceptions propagate.
    """
    outcome: list[tuple[bool, Any]] = []
    worker = threading.Thread(target=_enter_and_call, args=(os.fspath(path), function, outcome), name="netns-call")
    worker.start()
    worker.join()
    if not outcome:
        raise InternalError(f"no result from the call in network namespace {path}")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
