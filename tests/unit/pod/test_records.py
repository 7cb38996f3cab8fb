"""What is persisted comes back as written (to_json/from_json), and the state machines hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qmprt.errors import FailedPrecondition
from qmprt.pod.specs import ContainerSpec, DNSSettings, DeviceSpec, MountSpec, PortMapping, Resources, SandboxSpec
from qmprt.pod.live import Container, Sandbox
from qmprt.pod.records import ContainerRecord
from qmprt.pod.states import ContainerState, SandboxState, check_container_transition, check_sandbox_transition
from qmprt.pod.records import ContainerStatus, SandboxStatus
from qmprt.volumes import Attachment, EphemeralVolume, HostBlockVolume, ISCSIVolume, RBDVolume, VirtiofsShare

from .fakes import container_spec, make_container, make_sandbox, record, sandbox_spec

RESOURCES = Resources(cpu_quota=50_000, cpu_period=100_000, hugepage_limits=(("2Mi", 1 << 30),), unified=(("a", "b"),))


def through_json(document: object) -> object:
    return json.loads(json.dumps(document))


def test_specs_round_trip() -> None:
    pod = sandbox_spec(
        dns=DNSSettings(("1.1.1.1",), ("a",), ("ndots:2",)), port_mappings=(PortMapping("TCP", 80, 8080),),
        labels={"a": "b"}, overhead=RESOURCES, resources=Resources(), sysctls={"k": "v"},
    )
    assert SandboxSpec.from_json(through_json(pod.to_json())) == pod  # type: ignore[arg-type]
    spec = container_spec(
        command=("sh",), args=("-c", "x"), envs=(("A", "1"),), mounts=(MountSpec("/d", "/h", True),),
        devices=(DeviceSpec("/dev/x", "/dev/y"),), resources=RESOURCES, tty=True,
    )
    assert ContainerSpec.from_json(through_json(spec.to_json())) == spec  # type: ignore[arg-type]


def test_container_record_round_trips() -> None:
    kept = record(
        container_spec(resources=RESOURCES), "ab" * 32, host_nodes=(0, 1), volumes=(
            HostBlockVolume(Attachment("dev0", "disk"), "/dev/sdz"),
            EphemeralVolume(Attachment("data0", "data0"), "/p/data0.qcow2", 1 << 30),
            RBDVolume(Attachment("rbd0", "rbd0"), "pool", "img", ("10.0.0.1:6789",), "admin", "/p/rbd0.key"),
            ISCSIVolume(Attachment("iscsi0", "iscsi0", bus="virtio-scsi"), "10.0.0.2", "iqn.2026-12.io.qmprt:t", 1),
        ),
        shares=(VirtiofsShare("fs0", "qmprt-fs0", "/s", "/r/fs0.sock", read_only=True),), vm_uid=1_900_000_000, kernel="/k", cmdline="quiet",
    )
    assert ContainerRecord.from_json(through_json(kept.to_json())) == kept  # type: ignore[arg-type]


def test_statuses_round_trip() -> None:
    pod = SandboxStatus(SandboxState.NOTREADY, 1, netns_path="/run/netns/x", ip="10.0.0.1", additional_ips=("fd::1",))
    assert SandboxStatus.from_json(through_json(pod.to_json())) == pod  # type: ignore[arg-type]
    container = ContainerStatus(ContainerState.EXITED, 1, 2, 3, 137, "OOMKilled", "out of memory")
    assert ContainerStatus.from_json(through_json(container.to_json())) == container  # type: ignore[arg-type]


def test_created_objects_load_back_the_same(tmp_path: Path) -> None:
    sandbox = make_sandbox(tmp_path, sandbox_spec(labels={"x": "y"}))
    container = make_container(sandbox, vm_uid=1_900_000_001)
    container.update(ContainerState.RUNNING, started_at_ns=5)
    sandbox.set_state(SandboxState.NOTREADY)
    assert Sandbox.load(sandbox.directory).info() == sandbox.info()
    loaded = Container.load(container.directory)
    assert (loaded.info(), loaded.record) == (container.info(), container.record)


def test_records_are_written_once(tmp_path: Path) -> None:
    sandbox = make_sandbox(tmp_path)
    with pytest.raises(Exception):
        Sandbox.create(sandbox.id, sandbox.directory, sandbox.spec, sandbox.status)


def test_sandbox_transitions() -> None:
    check_sandbox_transition(SandboxState.READY, SandboxState.NOTREADY)
    check_sandbox_transition(SandboxState.NOTREADY, SandboxState.NOTREADY)
    with pytest.raises(FailedPrecondition, match="a notready sandbox cannot become ready"):
        check_sandbox_transition(SandboxState.NOTREADY, SandboxState.READY)


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        (ContainerState.CREATED, ContainerState.RUNNING, True),
        (ContainerState.CREATED, ContainerState.EXITED, True),
        (ContainerState.RUNNING, ContainerState.EXITED, True),
        (ContainerState.RUNNING, ContainerState.UNKNOWN, True),
        (ContainerState.EXITED, ContainerState.UNKNOWN, True),
        (ContainerState.UNKNOWN, ContainerState.EXITED, True),
        (ContainerState.EXITED, ContainerState.RUNNING, False),
        (ContainerState.RUNNING, ContainerState.CREATED, False),
        (ContainerState.UNKNOWN, ContainerState.RUNNING, False),
    ],
)
def test_container_transitions(current: ContainerState, new: ContainerState, allowed: bool) -> None:
    if allowed:
        check_container_transition(current, new)
    else:
        with pytest.raises(FailedPrecondition):
            check_container_transition(current, new)


def test_a_refused_transition_leaves_the_status_file_alone(tmp_path: Path) -> None:
    container = make_container(make_sandbox(tmp_path))
    container.update(ContainerState.EXITED, exit_code=1)
    with pytest.raises(FailedPrecondition):
        container.update(ContainerState.RUNNING)
    assert Container.load(container.directory).status.state == ContainerState.EXITED
