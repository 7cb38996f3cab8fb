"""The pod runtime on real QEMU, netns and cgroups: lifecycle, refusals that leave nothing, restart."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from qmprt import cgroups, config as config_module
from qmprt.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from qmprt.net import netns
from qmprt.pod import recovery
from qmprt.pod.model import ContainerMetadata, ContainerSpec, Resources, SandboxMetadata, SandboxSpec
from qmprt.pod.runtime import Runtime
from qmprt.pod.states import ContainerState, SandboxState

from .conftest import TEST_CGROUP_ROOT
from .guests import TinyGuest

BOOT_TIMEOUT = 90


@dataclass(frozen=True)
class Image:
    digest: str
    path: str
    format: str


class OneImage:
    """Stands in for the image store: it knows the tiny guest under the name "tiny"."""

    def __init__(self, guest: TinyGuest) -> None:
        self.image = Image("sha256:" + "0" * 64, str(guest.disk), "qcow2")

    def resolve(self, ref: str) -> Image | None:
        return self.image if ref in ("tiny", self.image.digest) else None


async def open_runtime(tiny: TinyGuest, state_dir: Path, run_dir: Path, cni_dir: Path) -> Runtime:
    cfg = config_module.load(state_dir=str(state_dir), run_dir=str(run_dir))
    cfg = dataclasses.replace(
        cfg,
        cgroups=dataclasses.replace(cfg.cgroups, root=f"{TEST_CGROUP_ROOT}/rt"),
        cni=dataclasses.replace(cfg.cni, conf_dir=str(cni_dir)),
    )
    runtime = Runtime(cfg, OneImage(tiny), cgroups.detect())  # type: ignore[arg-type]
    await recovery.recover(runtime)
    return runtime


def sandbox_spec(tmp_path: Path, name: str = "web") -> SandboxSpec:
    log_dir = tmp_path / "logs" / name
    log_dir.mkdir(parents=True, exist_ok=True)
    return SandboxSpec(
        metadata=SandboxMetadata(name=name, uid=secrets.token_hex(4), namespace="default"),
        hostname=f"{name}-host",
        log_directory=str(log_dir),
        labels={"app": name, "io.kubernetes.pod.name": name},
        annotations={"note": "üñí ✓"},
    )


def container_spec(**changes: object) -> ContainerSpec:
    base = ContainerSpec(
        metadata=ContainerMetadata(name="vm"),
        image="tiny",
        log_path="vm.log",
        envs=(("GREETING", "it's $HOME \"quoted\"\nline two ✓"),),
        labels={"tier": "front"},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def wait_for_log(path: str, text: str, timeout: float = BOOT_TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if os.path.exists(path) and text in Path(path).read_text(errors="replace"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s")


@pytest.fixture
async def runtime_dirs(tmp_path, run_dir):
    state_dir = tmp_path / "state"
    cni_dir = tmp_path / "cni"
    cni_dir.mkdir()
    yield state_dir, run_dir, cni_dir


@pytest.fixture
async def runtimes():
    """Runtimes a test opened; whatever sandboxes they still hold are removed afterwards."""
    opened: list[Runtime] = []
    yield opened
    if opened:
        last = opened[-1]
        for info in last.list_sandboxes():
            await last.remove_sandbox(info.id)
        await last.close()


async def test_lifecycle_restart_and_cleanup(tiny, tmp_path, runtime_dirs, cgroup_driver, runtimes) -> None:
    state_dir, run_dir, cni_dir = runtime_dirs
    runtime = await open_runtime(tiny, state_dir, run_dir, cni_dir)
    runtimes.append(runtime)
    health = runtime.health()
    assert health.runtime_ready and not health.network_ready and health.network_reason == "NetworkPluginNotReady"

    spec = sandbox_spec(tmp_path)
    sandbox_id = await runtime.run_sandbox(spec)
    with pytest.raises(AlreadyExists):
        await runtime.run_sandbox(spec)
    info = runtime.sandbox(sandbox_id[:10])
    assert info.status.state == SandboxState.READY and info.spec == spec
    assert netns.exists(netns.netns_name(sandbox_id))

    container_id = await runtime.create_container(sandbox_id, container_spec())
    with pytest.raises(FailedPrecondition, match="one container at a time"):
        await runtime.create_container(sandbox_id, container_spec(metadata=ContainerMetadata(name="second")))
    assert runtime.container(container_id).status.state == ContainerState.CREATED
    await runtime.start_container(container_id)
    created = runtime.container(container_id)
    assert created.status.state == ContainerState.RUNNING and created.status.started_at_ns > 0
    await wait_for_log(created.log_path, tiny.ready_marker)

    uname = await runtime.exec_sync(container_id, ["uname", "-r"], 30)
    assert uname.stdout.decode().strip() == tiny.kernel_version
    greeting = await runtime.exec_sync(container_id, ["sh", "-c", ". /etc/cloud/environment; printf %s \"$GREETING\""], 30)
    assert greeting.stdout.decode() == "it's $HOME \"quoted\"\nline two ✓"
    stats = runtime.container_stats(container_id)
    assert stats.cpu_usage_ns and stats.memory_working_set_bytes and stats.writable_layer_bytes > 0
    assert [c.id for c in runtime.list_containers(sandbox_id=sandbox_id[:8], labels={"tier": "front"})] == [container_id]
    assert runtime.list_containers(labels={"tier": "back"}) == []

    # qmprt goes away and comes back: same ids, states and timestamps; the VM still answers.
    await runtime.close()
    runtime = await open_runtime(tiny, state_dir, run_dir, cni_dir)
    runtimes.append(runtime)
    again = runtime.container(container_id)
    assert again.status == created.status
    assert runtime.sandbox(sandbox_id).status == info.status
    await runtime.exec_sync(container_id, ["sh", "-c", "echo after-restart > /dev/ttyS0"], 30)
    await wait_for_log(again.log_path, "after-restart", 20)

    await runtime.stop_container(container_id, 30)
    stopped = runtime.container(container_id).status
    assert (stopped.state, stopped.exit_code, stopped.reason) == (ContainerState.EXITED, 0, "Completed")
    assert stopped.finished_at_ns > stopped.started_at_ns
    await runtime.stop_container(container_id, 30)  # idempotent
    await runtime.remove_container(container_id)
    await runtime.remove_container(container_id)
    with pytest.raises(NotFound):
        runtime.container(container_id)

    await runtime.stop_sandbox(sandbox_id)
    assert runtime.sandbox(sandbox_id).status.state == SandboxState.NOTREADY
    await runtime.remove_sandbox(sandbox_id)
    await runtime.remove_sandbox(sandbox_id)
    await runtime.stop_sandbox(sandbox_id)
    assert not netns.exists(netns.netns_name(sandbox_id))
    assert list((state_dir / "pods").iterdir()) == []
    assert not cgroup_driver.exists(f"{TEST_CGROUP_ROOT}/rt/{sandbox_id[:16]}")
    await runtime.close()


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"log_path": "../escape.log"}, InvalidArgument, "log_path"),
        ({"log_path": "/abs.log"}, InvalidArgument, "log_path"),
        ({"resources": Resources(memory_limit_in_bytes=1 << 50)}, InvalidArgument, "more than this node"),
        ({"resources": Resources(memory_limit_in_bytes=64 << 20)}, InvalidArgument, "cannot hold"),
        ({"envs": (("1BAD-NAME", "x"),)}, InvalidArgument, "1BAD-NAME"),
        ({"image": "nonexistent"}, NotFound, "pull it first"),
        ({"image": ""}, InvalidArgument, "image"),
    ],
    ids=["log-path-escape", "log-path-absolute", "absurd-memory", "memory-below-overhead", "bad-env-name",
         "unknown-image", "no-image"],
)
async def test_bad_container_requests_leave_nothing(tiny, tmp_path, runtime_dirs, runtimes, changes, error, message) -> None:
    state_dir, run_dir, cni_dir = runtime_dirs
    runtime = await open_runtime(tiny, state_dir, run_dir, cni_dir)
    runtimes.append(runtime)
    sandbox_id = await runtime.run_sandbox(sandbox_spec(tmp_path))
    with pytest.raises(error, match=message):
        await runtime.create_container(sandbox_id, container_spec(**changes))
    assert runtime.list_containers() == []
    assert [p.name for p in (state_dir / "pods" / sandbox_id).iterdir()] == ["sandbox.json", "status.json"]
    # The name was released: the same container can be created properly now.
    good = await runtime.create_container(sandbox_id, container_spec())
    await runtime.remove_sandbox(sandbox_id)
    with pytest.raises(NotFound):
        runtime.container(good)
    assert list((state_dir / "pods").iterdir()) == []


async def test_bad_sandbox_requests(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    state_dir, run_dir, cni_dir = runtime_dirs
    runtime = await open_runtime(tiny, state_dir, run_dir, cni_dir)
    runtimes.append(runtime)
    good = sandbox_spec(tmp_path)
    with pytest.raises(InvalidArgument, match="runtime handler"):
        await runtime.run_sandbox(dataclasses.replace(good, runtime_handler="kata"))
    with pytest.raises(InvalidArgument, match="name, namespace and uid"):
        await runtime.run_sandbox(dataclasses.replace(good, metadata=SandboxMetadata("", "u", "default")))
    with pytest.raises(InvalidArgument, match="absolute"):
        await runtime.run_sandbox(dataclasses.replace(good, log_directory="relative/dir"))
    with pytest.raises(NotFound):
        runtime.sandbox("feedface")
    with pytest.raises(NotFound):
        await runtime.create_container("feedface", container_spec())
    assert list((state_dir / "pods").iterdir()) == []
    sandbox_id = await runtime.run_sandbox(dataclasses.replace(good, runtime_handler="qmprt"))
    assert runtime.sandbox(sandbox_id).spec.runtime_handler == "qmprt"
    await runtime.remove_sandbox(sandbox_id)
