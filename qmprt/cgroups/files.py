"""Reading and writing cgroup control files, with OS errors turned into cgroup errors.

Writes open the file without ``O_CREAT``: a control file that is not there means the controller is
not enabled for that cgroup, and creating a regular file in its place would hide that.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Protocol

from qmprt.cgroups.errors import CgroupBusy, CgroupError, CgroupNotFound

log = logging.getLogger(__name__)

PROCS_FILE = "cgroup.procs"


class DirectoryOps(Protocol):
    """The two directory operations whose effect on a cgroup filesystem the kernel defines.

    On cgroupfs, ``mkdir`` populates the new directory with control files and ``rmdir`` removes a
    directory that still lists them; tests substitute an implementation that does the same in a
    plain directory tree.
    """

    def mkdir(self, directory: str) -> None: ...

    def rmdir(self, directory: str) -> None: ...


class KernelDirectoryOps:
    """Plain ``os.mkdir``/``os.rmdir``, which is all a real cgroup filesystem needs."""

    def mkdir(self, directory: str) -> None:
        os.mkdir(directory, 0o755)

    def rmdir(self, directory: str) -> None:
        os.rmdir(directory)


def wrap_os_error(action: str, file_path: str, err: OSError) -> CgroupError:
    """The cgroup error that explains ``err``, raised by the caller ``from err``."""
    detail = err.strerror or str(err)
    if isinstance(err, FileNotFoundError):
        directory = os.path.dirname(file_path)
        if not os.path.isdir(directory):
            return CgroupNotFound(f"cannot {action} {file_path}: cgroup {directory} does not exist")
        return CgroupError(f"cannot {action} {file_path}: no such file (controller not enabled here?)")
    if err.errno == errno.EBUSY:
        return CgroupBusy(f"cannot {action} {file_path}: {detail}")
    return CgroupError(f"cannot {action} {file_path}: {detail}")


def read_text(file_path: str) -> str:
    try:
        with open(file_path, encoding="ascii") as control_file:
            return control_file.read()
    except OSError as err:
        raise wrap_os_error("read", file_path, err) from err


def read_optional_text(file_path: str) -> str | None:
    """The file's content, or ``None`` when the file does not exist (an optional kernel feature)."""
    if not os.path.exists(file_path):
        return None
    return read_text(file_path)


def read_int(file_path: str) -> int:
    text = read_text(file_path).strip()
    try:
        return int(text)
    except ValueError as err:
        raise CgroupError(f"{file_path}: expected an integer, got {text!r}") from err


def read_limit(file_path: str) -> int:
    """An integer limit where ``max`` (v2) or ``-1`` (v1) mean unlimited; returns -1 for both."""
    text = read_text(file_path).strip()
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError as err:
        raise CgroupError(f"{file_path}: expected an integer or 'max', got {text!r}") from err


def read_key_values(file_path: str) -> dict[str, int]:
    """A flat-keyed file (``memory.stat``, ``cpu.stat``, ``memory.events``, ``memory.oom_control``)."""
    values: dict[str, int] = {}
    for line in read_text(file_path).splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("-").isdigit():
            values[fields[0]] = int(fields[1])
    return values


def read_pids(directory: str) -> list[int]:
    """The pids listed in ``cgroup.procs`` of ``directory``; empty if the directory is gone."""
    try:
        with open(os.path.join(directory, PROCS_FILE), encoding="ascii") as procs_file:
            return [int(line) for line in procs_file.read().split()]
    except FileNotFoundError:
        return []
    except OSError as err:
        raise wrap_os_error("read", os.path.join(directory, PROCS_FILE), err) from err


def write_text(file_path: str, value: str) -> None:
    """Write ``value`` in a single ``write(2)``, as the kernel wants control file updates."""
    try:
        file_descriptor = os.open(file_path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as err:
        raise wrap_os_error("open", file_path, err) from err
    try:
        os.write(file_descriptor, value.encode("ascii"))
    except OSError as err:
        raise wrap_os_error(f"write {value!r} to", file_path, err) from err
    finally:
        os.close(file_descriptor)


def descendant_directories(directory: str) -> list[str]:
    """``directory`` and every sub-directory below it, deepest first (the order rmdir needs)."""
    found: list[str] = []
    for walk_directory, _, _ in os.walk(directory, topdown=False):
        found.append(walk_directory)
    return found


def has_subdirectories(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            return any(entry.is_dir(follow_symlinks=False) for entry in entries)
    except FileNotFoundError:
        return False


def remove_if_empty(directory_ops: DirectoryOps, directories: list[str]) -> bool:
    """rmdir each directory unless one has child cgroups; True when none is left."""
    if any(has_subdirectories(directory) for directory in directories):
        return False
    for directory in directories:
        try:
            directory_ops.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True


def remove_directory(directory_ops: DirectoryOps, directory: str, deadline: float) -> None:
    """rmdir, retrying while the kernel still reports the just-emptied cgroup busy."""
    while True:
        try:
            directory_ops.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise wrap_os_error("remove", directory, err) from err
            time.sleep(0.02)


def make_directory(directory_ops: DirectoryOps, directory: str) -> bool:
    """Create ``directory`` unless it exists; True if this call created it."""
    if os.path.isdir(directory):
        return False
    try:
        directory_ops.mkdir(directory)
    except FileExistsError as err:
        if os.path.isdir(directory):
            return False  # another creator won the race
        raise wrap_os_error("create", directory, err) from err
    except OSError as err:
        raise wrap_os_error("create", directory, err) from err
    return True


def remove_created_directories(directory_ops: DirectoryOps, created_directories: list[str]) -> None:
    """Undo a failed create: rmdir what it made, newest first, logging (not raising) failures."""
    for directory in reversed(created_directories):
        try:
            directory_ops.rmdir(directory)
        except OSError:
            log.warning("could not remove %s while undoing a failed create", directory, exc_info=True)
