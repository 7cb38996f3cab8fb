"""Fixtures for tests that boot real guests under QEMU (TCG here) with real cgroups."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt import cgroups
from qmprt.pod.runtime import Runtime
from qmprt.vm.config import VMState
from qmprt.vm.machine import VM

from .guests import TinyGuest, tiny_guest

TEST_CGROUP_ROOT = f"qmprt-test-{os.getpid()}"


def _qmprt_netns() -> set[str]:
    directory = Path("/var/run/netns")
    return {entry.name for entry in directory.iterdir() if entry.name.startswith("qmprt-")} if directory.is_dir() else set()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After the whole integration suite: no network namespace, QEMU or cgroup of ours remains.

    The suite's cgroups all live below ``TEST_CGROUP_ROOT``; empty ones (a kubelet-style pod parent
    a test made) are removed here, and a cgroup that still holds a process fails the run.
    """
    before = _qmprt_netns()
    yield
    problems = []
    leaked = _qmprt_netns() - before
    if leaked:
        problems.append(f"network namespaces left behind: {sorted(leaked)}")
    stray = _qemu_processes("guest=t")
    if stray:
        problems.append(f"QEMU processes left behind: {[p.pid for p in stray]}")
    # Clean up before reporting, so one failure does not leave the rest behind as well.
    driver = cgroups.detect()
    try:
        if driver.exists(TEST_CGROUP_ROOT):
            driver.open(TEST_CGROUP_ROOT).delete()
    except cgroups.CgroupError as err:
        problems.append(f"a test left a busy cgroup behind: {err}")
    assert not problems, "; ".join(problems)


@pytest.fixture(scope="session")
def tiny() -> TinyGuest:
    return tiny_guest()


@pytest.fixture(scope="session")
def cgroup_driver() -> cgroups.CgroupDriver:
    return cgroups.detect()


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short directory for unix sockets (pytest's tmp_path can exceed the 107-byte limit)."""
    path = Path(f"/tmp/qmprt-t-{secrets.token_hex(4)}")
    path.mkdir(mode=0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _qemu_processes(tag: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] and "qemu-system" in process.info["name"] and any(tag in arg for arg in cmdline):
            found.append(process)
    return found


@pytest.fixture
def vm_tag() -> str:
    """A prefix for the VM ids of one test; the leak check looks for QEMU processes carrying it."""
    return f"t{secrets.token_hex(3)}"


@pytest.fixture
async def vms(vm_tag: str, cgroup_driver: cgroups.CgroupDriver) -> AsyncIterator[list[VM]]:
    """VMs a test starts; anything still running afterwards is killed and reported as a leak."""
    started: list[VM] = []
    yield started
    leaked = []
    for vm in started:
        if vm.status.state != VMState.EXITED:
            leaked.append(vm.vm_id)
            await vm.stop(grace=0)
    for process in _qemu_processes(f"guest={vm_tag}"):
        leaked.append(f"pid {process.pid}")
        process.kill()
    assert not leaked, f"the test left VMs running: {leaked}"


def make_cgroup(driver: cgroups.CgroupDriver, name: str) -> cgroups.Cgroup:
    return driver.create(f"{TEST_CGROUP_ROOT}/{name}")


@pytest.fixture
async def runtime_dirs(tmp_path: Path, run_dir: Path) -> AsyncIterator[tuple[Path, Path, Path]]:
    state_dir = tmp_path / "state"
    cni_dir = tmp_path / "cni"
    cni_dir.mkdir()
    yield state_dir, run_dir, cni_dir


@pytest.fixture
async def runtimes() -> AsyncIterator[list[Runtime]]:
    """Runtimes a test opened; whatever sandboxes they still hold are removed afterwards."""
    opened: list[Runtime] = []
    yield opened
    if opened:
        last = opened[-1]
        for info in last.list_sandboxes():
            await last.remove_sandbox(info.id)
        await last.close()


@pytest.fixture
async def stubs(server: Any) -> AsyncIterator[tuple[Any, Any]]:
    """(RuntimeService, ImageService) stubs on a channel to the module's ``server`` (a ServerProcess)."""
    channel = aio.insecure_channel(server.address)
    yield api_pb2_grpc.RuntimeServiceStub(channel), api_pb2_grpc.ImageServiceStub(channel)
    await channel.close()
