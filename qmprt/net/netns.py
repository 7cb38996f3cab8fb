"""Network namespaces of sandboxes, named ``qmprt-<sandbox id prefix>`` under /var/run/netns.

The standard location means ``ip netns exec`` works on them for debugging, and CNI plugins get an
ordinary path. pyroute2 does the work; its errors are wrapped here.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

from qmprt.errors import InternalError

NETNS_DIR = Path("/var/run/netns")


def netns_name(sandbox_id: str) -> str:
    return f"qmprt-{sandbox_id[:16]}"


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def create(name: str) -> Path:
    path = netns_path(name)
    if path.exists():
        raise InternalError(f"network namespace {name} already exists")
    try:
        pyroute2_netns.create(name)
    except OSError as err:
        raise InternalError(f"cannot create network namespace {name}: {err}") from err
    return path


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
        if path.exists():
            raise InternalError(f"cannot remove network namespace {name}: {err}") from err
