"""The pod runtime on real QEMU, netns and cgroups: lifecycle, refusals that leave nothing, restart."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from qmprt.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from qmprt.net import netns
from qmprt.pod.specs import ContainerMetadata, DeviceSpec, MountSpec, Resources
from qmprt.pod.states import ContainerState, SandboxState

from .conftest import TEST_CGROUP_ROOT
from .pods import container_spec, open_runtime, sandbox_spec, wait_for_log


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
    second_id = await runtime.create_container(sandbox_id, container_spec(metadata=ContainerMetadata(name="second")))
    assert runtime.container(container_id).status.state == ContainerState.CREATED
    await runtime.start_container(container_id)
    # Several containers may be created; only one VM of a pod runs at a time.
    with pytest.raises(FailedPrecondition, match="one container at a time"):
        await runtime.start_container(second_id)
    assert runtime.container(second_id).status.state == ContainerState.CREATED
    await runtime.remove_container(second_id)
    created = runtime.container(container_id)
    assert created.status.state == ContainerState.RUNNING and created.status.started_at_ns > 0
    await wait_for_log(created.log_path, tiny.ready_marker)

    uname = await runtime.exec_sync(container_id, ["uname", "-r"], 30)
    assert uname.stdout.decode().strip() == tiny.kernel_version
    # An operator reaches the live VM by the pod's name: qmprt qmp opens qmp-shell on its second monitor.
    for target in ("default/web", sandbox_id[:12]):
        shell = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("qmprt")), "qmp", "--state-dir", str(state_dir), target,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(shell.communicate(b"query-name\n"), 30)
        assert shell.returncode == 0 and f'"name": "{container_id}"' in out.decode(), out
    greeting = await runtime.exec_sync(container_id, ["sh", "-c", ". /etc/cloud/environment; printf %s \"$GREETING\""], 30)
    assert greeting.stdout.decode() == "it's $HOME \"quoted\"\nline two ✓"
    stats = await runtime.container_stats(container_id)
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
        ({"resources": Resources(memory_limit_in_bytes=1 << 50)}, InvalidArgument, "more than this node"),
        ({"resources": Resources(memory_limit_in_bytes=64 << 20)}, InvalidArgument, "cannot hold"),
        ({"envs": (("1BAD-NAME", "x"),)}, InvalidArgument, "1BAD-NAME"),
        ({"image": "nonexistent"}, NotFound, "pull it first"),
        ({"annotations": {"qmprt.io/vcpus": "3"}}, InvalidArgument, "more vCPUs"),
        ({"annotations": {"qmprt.io/numa-nodes": "2"}}, InvalidArgument, "NUMA node needs"),
        ({"annotations": {"qmprt.io/vcpu": "1"}}, InvalidArgument, "unknown container annotation"),
        ({"resources": Resources(cpuset_cpus="0-x")}, InvalidArgument, "'0-x' is neither a number nor a range"),
        ({"resources": Resources(cpuset_mems="7")}, InvalidArgument, "node"),
        ({"resources": Resources(hugepage_limits=(("3MB", 128 << 20),))}, InvalidArgument, "hugepage size"),
        ({"mounts": (MountSpec("/etc/app", "/nonexistent/qmprt-test"),)}, InvalidArgument, "does not exist"),
        ({"devices": (DeviceSpec("/dev/vdz", "/nonexistent/disk"),)}, InvalidArgument, "cannot be used"),
        ({"devices": (DeviceSpec("/dev/vdz", "/etc"),)}, InvalidArgument, "neither a block device"),
        ({"annotations": {"qmprt.io/data-volumes": "lots"}}, InvalidArgument, "qmprt.io/data-volumes"),
        ({"annotations": {"qmprt.io/user-data": "#cloud-config\n# " + "x" * 70_000}}, InvalidArgument, "user-data"),
        ({"annotations": {"qmprt.io/user-data": "#cloud-config\n- a list\n"}}, InvalidArgument, "user-data"),
    ],
    ids=["absurd-memory", "memory-below-overhead", "bad-env-name",
         "unknown-image", "more-vcpus-than-granted", "numa-nodes-without-vcpus", "annotation-typo",
         "bad-cpuset", "absent-numa-node", "bad-hugepage-size", "mount-missing",
         "device-missing", "device-not-a-disk", "bad-data-volume-size", "user-data-too-big",
         "user-data-not-a-mapping"],
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
    with pytest.raises(NotFound):
        runtime.sandbox("feedface")
    with pytest.raises(NotFound):
        await runtime.create_container("feedface", container_spec())
    assert list((state_dir / "pods").iterdir()) == []
    sandbox_id = await runtime.run_sandbox(dataclasses.replace(good, runtime_handler="qmprt"))
    assert runtime.sandbox(sandbox_id).spec.runtime_handler == "qmprt"
    await runtime.remove_sandbox(sandbox_id)


async def test_start_racing_remove_leaves_nothing(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    """RemoveContainer called while StartContainer runs (and the other way round): whichever wins,
    the container ends removed, with no directory, cgroup or QEMU behind it, and no INTERNAL."""
    runtime = await open_runtime(tiny, *runtime_dirs)
    runtimes.append(runtime)
    sandbox_id = await runtime.run_sandbox(sandbox_spec(tmp_path))
    for remove_first in (False, True):
        container_id = await runtime.create_container(
            sandbox_id, container_spec(metadata=ContainerMetadata(name=f"race-{remove_first}"))
        )
        directory = runtime.containers[container_id].directory
        calls = [runtime.start_container(container_id), runtime.remove_container(container_id)]
        if remove_first:
            calls.reverse()
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            assert result is None or isinstance(result, (NotFound, FailedPrecondition)), repr(result)
        await asyncio.sleep(0.5)  # exit callbacks of a VM that started and was stopped
        assert container_id not in runtime.containers
        assert not directory.exists(), f"{directory} came back: {list(directory.iterdir())}"
        qemus = subprocess.run(["pgrep", "-f", f"guest={container_id}"], capture_output=True, text=True).stdout
        assert not qemus.strip(), qemus


async def test_a_start_cut_before_qemu_was_recorded_stays_created(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    """qmprt killed between spawning QEMU (into the VM's cgroup) and recording its pid: the next
    qmprt kills that QEMU through the cgroup, keeps the container CREATED, and a retried start works.
    The window is reproduced exactly: a VM really started, then its status files put back to what
    they held inside the window."""
    import json

    runtime = await open_runtime(tiny, *runtime_dirs)
    runtimes.append(runtime)
    sandbox_id = await runtime.run_sandbox(sandbox_spec(tmp_path))
    container_id = await runtime.create_container(sandbox_id, container_spec())
    await runtime.start_container(container_id)
    directory = runtime.containers[container_id].directory
    await runtime.close()  # qmprt goes away; the VM runs on
    for name, changes in (("vm-status.json", {"pid": None, "pid_create_time": None}), ("status.json", {"state": "created"})):
        document = json.loads((directory / name).read_text())
        document.update(changes)
        (directory / name).write_text(json.dumps(document))
    assert subprocess.run(["pgrep", "-f", f"guest={container_id}"], capture_output=True).returncode == 0

    restarted = await open_runtime(tiny, *runtime_dirs)
    runtimes.append(restarted)
    assert restarted.container(container_id).status.state == ContainerState.CREATED
    for _ in range(50):
        if subprocess.run(["pgrep", "-f", f"guest={container_id}"], capture_output=True).returncode != 0:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the QEMU of the cut start still runs")
    assert not (directory / "vm.json").exists()
    await restarted.start_container(container_id)
    await wait_for_log(restarted.container(container_id).log_path, tiny.ready_marker)
    assert restarted.container(container_id).status.state == ContainerState.RUNNING


async def test_a_corrupt_record_is_quarantined_and_the_rest_recovers(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    runtime = await open_runtime(tiny, *runtime_dirs)
    runtimes.append(runtime)
    kept_id = await runtime.run_sandbox(sandbox_spec(tmp_path, "kept"))
    broken_id = await runtime.run_sandbox(sandbox_spec(tmp_path, "broken"))
    half_id = await runtime.create_container(kept_id, container_spec(metadata=ContainerMetadata(name="half")))
    whole_id = await runtime.create_container(kept_id, container_spec(metadata=ContainerMetadata(name="whole")))
    state_root = runtime.state_root
    await runtime.close()
    (state_root / "pods" / broken_id / "status.json").write_text('{"state": "re')  # torn by a disk fault
    (state_root / "pods" / kept_id / half_id / "container.json").write_text('{"version": 1}')  # fields missing

    restarted = await open_runtime(tiny, *runtime_dirs)
    runtimes.append(restarted)
    assert [info.id for info in restarted.list_sandboxes()] == [kept_id]
    assert [info.id for info in restarted.list_containers()] == [whole_id]
    assert (state_root / "quarantine" / broken_id / "sandbox.json").exists()
    assert (state_root / "quarantine" / kept_id / half_id / "container.json").exists()
    assert not netns.exists(netns.netns_name(broken_id))
