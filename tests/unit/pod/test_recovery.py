"""Recovery's decisions that need no QEMU: half-created and unreadable records, containers whose VM
never ran or whose start was cut, and a state root written by an earlier qmprt (tests/unit/pod/golden)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from qmprt import state
from qmprt.config import Config
from qmprt.pod import guest, recovery
from qmprt.pod.events import EventType
from qmprt.pod.live import Container, Sandbox
from qmprt.pod.registry import Registry
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.pod.vms import ContainerVMs
from qmprt.vm.devices import RawArgs

from .fakes import FakeCgroupDriver, FakeNetworks, make_container, make_sandbox

GOLDEN = Path(__file__).parent / "golden"
SANDBOX_ID = "5a" * 32
RUNNING_ID = "c1" * 32
EXITED_ID = "e2" * 32


class Recovered:
    def __init__(self, root: Path, driver: FakeCgroupDriver | None = None, networks: FakeNetworks | None = None) -> None:
        self.root = root
        self.registry = Registry()
        self.driver = driver or FakeCgroupDriver()
        self.vms = ContainerVMs(Config(), self.driver, root / "run", self.registry)  # type: ignore[arg-type]
        self.networks = networks or FakeNetworks()

    async def run(self) -> dict[str, int]:
        counts = await recovery.recover(self.root, self.registry, self.vms, self.networks)  # type: ignore[arg-type]
        return {key: value for key, value in counts.items() if value}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    state.ensure_private_dir(tmp_path / "pods")
    return tmp_path


@pytest.fixture
def netns_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery.netns, "exists", lambda name: True)


async def test_half_created_objects_are_removed(root: Path, netns_present: None) -> None:
    half_sandbox = state.ensure_private_dir(root / "pods" / ("1" * 64))
    sandbox = make_sandbox(root / "pods")
    state.ensure_private_dir(sandbox.directory / ("2" * 64))
    recovered = Recovered(root)
    assert await recovered.run() == {"half-created-removed": 2}
    assert not half_sandbox.exists() and not (sandbox.directory / ("2" * 64)).exists()
    assert recovered.networks.forgotten == ["1" * 64]  # its CNI attachments are deleted from the cache
    assert list(recovered.registry.sandboxes) == [sandbox.id]
    assert recovered.registry.sandbox(sandbox.id).status.state == SandboxState.READY


async def test_unreadable_records_are_quarantined(root: Path, netns_present: None) -> None:
    bad = make_sandbox(root / "pods")
    (bad.directory / "sandbox.json").write_text("{not json")
    good = make_sandbox(root / "pods")
    broken = make_container(good)
    (broken.directory / "container.json").write_text(json.dumps({"spec": {}}))
    recovered = Recovered(root)
    assert await recovered.run() == {"quarantined": 2}
    assert (root / "quarantine" / bad.id / "sandbox.json").exists()
    assert (root / "quarantine" / good.id / broken.id / "container.json").exists()
    assert list(recovered.registry.sandboxes) == [good.id] and recovered.registry.containers == {}


async def test_a_sandbox_without_its_namespace_or_wiring_is_notready(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lost = make_sandbox(root / "pods")
    recovered = Recovered(root)
    await recovered.run()
    assert recovered.registry.sandbox(lost.id).status.state == SandboxState.NOTREADY


async def test_a_running_container_whose_vm_never_ran_has_exited(root: Path, netns_present: None) -> None:
    container = make_container(make_sandbox(root / "pods"))
    container.update(ContainerState.RUNNING)
    created = make_container(make_sandbox(root / "pods"))
    recovered = Recovered(root)
    events = recovered.registry.events.subscribe()
    assert await recovered.run() == {"exited": 1, "unchanged": 1}
    status = recovered.registry.container(container.id).status
    assert (status.state, status.exit_code, status.reason) == (ContainerState.EXITED, 255, "Error")
    assert recovered.registry.container(created.id).status.state == ContainerState.CREATED
    # Found exited is announced like any other exit, with the pod as recovery left it.
    stopped = await anext(events)
    assert (stopped.container_id, stopped.type, events.backlog) == (container.id, EventType.STOPPED, 0)
    assert [c.status.state for c in stopped.containers if c.id == container.id] == [ContainerState.EXITED]


async def test_a_start_cut_before_the_pid_stays_created_and_its_leftovers_go(root: Path, netns_present: None) -> None:
    container = make_container(make_sandbox(root / "pods"))
    (container.directory / "vm.json").write_text("{}")
    state.write_json_atomic(container.directory / "vm-status.json", {"state": "starting", "pid": None})
    run_dir = state.ensure_private_dir(root / "run" / "vm" / container.id[:16])
    driver = FakeCgroupDriver(container.record.cgroup_path, f"{container.record.cgroup_path}-fs")
    recovered = Recovered(root, driver)
    assert await recovered.run() == {"unchanged": 1}
    assert recovered.registry.container(container.id).status.state == ContainerState.CREATED
    cgroup = driver.opened[container.record.cgroup_path]
    assert cgroup.killed and cgroup.deleted  # whatever the cut start spawned lives in it
    assert driver.opened[f"{container.record.cgroup_path}-fs"].deleted
    assert not (container.directory / "vm.json").exists() and not run_dir.exists()


def golden_root(tmp_path: Path) -> Path:
    """The golden state root, its absolute paths moved under ``tmp_path``."""
    shutil.copytree(GOLDEN / "pods", tmp_path / "pods")
    for path in (tmp_path / "pods").rglob("*.json"):
        text = path.read_text().replace("/var/lib/qmprt", str(tmp_path)).replace("/run/qmprt", str(tmp_path / "run"))
        path.write_text(text)
    return tmp_path


def plain(value: object) -> object:
    return json.loads(json.dumps(dataclasses.asdict(value), default=lambda o: o.value))  # type: ignore[call-overload]


def test_records_written_by_an_earlier_qmprt_read_back_the_same(tmp_path: Path) -> None:
    expected = json.loads((GOLDEN / "expected.json").read_text())
    root = golden_root(tmp_path)
    sandbox = Sandbox.load(root / "pods" / SANDBOX_ID)
    assert plain(sandbox.info()) == expected["sandboxes"][SANDBOX_ID]["info"]
    assert sandbox.network is None
    for container_id in (RUNNING_ID, EXITED_ID):
        container = Container.load(sandbox.directory / container_id)
        want = expected["containers"][container_id]
        want["record"]["image_path"] = want["record"]["image_path"].replace("/var/lib/qmprt", str(tmp_path))
        assert plain(container.info()) == want["info"]
        want["record"]["volumes"] = []  # a field added since: an earlier record's disks are its volume_args
        want["record"]["template"] = ""  # added since: an earlier container is no template's clone
        assert plain(container.record) == want["record"]
        # Its disks reach the VM as that qmprt rendered them.
        assert guest.extra_devices(container.record) == (RawArgs(tuple(want["record"]["volume_args"])),)


async def test_a_state_root_written_by_an_earlier_qmprt_is_readopted(tmp_path: Path, netns_present: None) -> None:
    root = golden_root(tmp_path)
    sandbox_dir = root / "pods" / SANDBOX_ID
    cgroup = f"qmprt/{SANDBOX_ID[:16]}/qmprt-{RUNNING_ID[:16]}"
    recovered = Recovered(root, FakeCgroupDriver(cgroup))
    # The running container's QEMU (pid 4000000) is gone: it is adopted and found exited.
    assert await recovered.run() == {"exited": 1, "unchanged": 1}
    registry = recovered.registry
    assert list(registry.sandboxes) == [SANDBOX_ID] and set(registry.containers) == {RUNNING_ID, EXITED_ID}
    sandbox = registry.sandbox(SANDBOX_ID)
    assert (sandbox.spec.metadata.name, sandbox.status.state, sandbox.status.ip) == ("web", SandboxState.READY, "10.88.0.5")
    running = registry.container(RUNNING_ID)
    assert running.status.state == ContainerState.EXITED and running.status.started_at_ns == 1_700_000_002_000_000_000
    assert running.vm is not None and running.cgroup is recovered.driver.opened[cgroup]
    exited = registry.container(EXITED_ID)
    assert (exited.status.state, exited.status.exit_code, exited.vm) == (ContainerState.EXITED, 3, None)
    assert Container.load(sandbox_dir / RUNNING_ID).status.state == ContainerState.EXITED  # and it is on disk
    for task in list(recovered.vms.tasks):
        task.cancel()
