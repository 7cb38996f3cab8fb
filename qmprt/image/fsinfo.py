"""Which filesystem holds a path (for ImageFsInfo), and how much of it a directory tree uses."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    device: tuple[int, int]  # major, minor
    fs_type: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, index = [], 0
    while index < len(field):
        if field[index] == "\\" and index + 4 <= len(field) and field[index + 1 : index + 4].isdigit():
            out.append(chr(int(field[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of /proc/<pid>/mountinfo (see proc(5))."""
    entries = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        fields = before.split()
        tail = after.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        major, _, minor = fields[2].partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        entries.append(MountEntry(_unescape(fields[4]), (int(major), int(minor)), tail[0], _unescape(tail[1])))
    return entries


def _contains(mount_point: str, path: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def find_mount(path: str, entries: list[MountEntry], device: tuple[int, int] | None) -> MountEntry | None:
    """The deepest mount containing ``path``, preferring mounts of ``device`` (the path's st_dev)."""
    containing = [entry for entry in entries if _contains(entry.mount_point, path)]
    same_device = [entry for entry in containing if entry.device == device]
    candidates = same_device or containing
    # A later mount on the same mount point shadows the earlier one: ties go to the later entry.
    best: MountEntry | None = None
    for entry in candidates:
        if best is None or len(entry.mount_point) >= len(best.mount_point):
            best = entry
    return best


def mount_point_of(path: str | os.PathLike[str]) -> str:
    """The mount point of the filesystem holding ``path`` (real path, symlinks resolved)."""
    real = os.path.realpath(path)
    st_dev = os.stat(real).st_dev
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            entries = parse_mountinfo(handle.read())
    except OSError:
        entries = []
    found = find_mount(real, entries, (os.major(st_dev), os.minor(st_dev)))
    if found is not None:
        return found.mount_point
    # No mountinfo: climb until the device changes.
    current = real
    while current != "/" and os.stat(os.path.dirname(current)).st_dev == st_dev:
        current = os.path.dirname(current)
    return current


@dataclass(frozen=True)
class TreeUsage:
    used_bytes: int  # allocated blocks, as du counts them
    inodes_used: int  # files and directories, the root included


def tree_usage(root: str | os.PathLike[str]) -> TreeUsage:
    used, inodes = 0, 0
    pending = [os.fspath(root)]
    while pending:
        directory = pending.pop()
        try:
            info = os.lstat(directory)
        except FileNotFoundError:
            continue
        used += info.st_blocks * 512
        inodes += 1
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                entry_stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(entry_stat.st_mode):
                pending.append(entry.path)
            else:
                used += entry_stat.st_blocks * 512
                inodes += 1
    return TreeUsage(used, inodes)
