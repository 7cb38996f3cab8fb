"""What CRI conformance asks of a VM pod, on real guests: a derived hostname, pod sysctls in the
guest, cAdvisor-style metrics from the VM's cgroup, and a container command that is a job."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from qmprt.cloudinit import hostname_from_name
from qmprt.pod.annotations import COMMAND_EXIT
from qmprt.pod.specs import ContainerMetadata, SandboxMetadata
from qmprt.pod.states import ContainerState

from .pods import BOOT_TIMEOUT, container_spec, open_runtime, sandbox_spec, wait_for_log

CRITEST_NAME = "create-PodSandbox-for-container-0f7d0b52-6a4e-4c1e-9a8e-1bd5c3a4e2f0"


async def test_derived_hostname_sysctls_and_metrics(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    runtime = await open_runtime(tiny, *runtime_dirs)
    runtimes.append(runtime)
    spec = dataclasses.replace(
        sandbox_spec(tmp_path),
        metadata=SandboxMetadata(name=CRITEST_NAME, uid="u-1", namespace="conformance"),
        hostname="",
        sysctls={"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100"},
    )
    sandbox_id = await runtime.run_sandbox(spec)
    container_id = await runtime.create_container(sandbox_id, container_spec())
    await runtime.start_container(container_id)
    await wait_for_log(runtime.container(container_id).log_path, tiny.ready_marker)

    hostname = (await runtime.exec_sync(container_id, ["hostname"], 30)).stdout.decode().strip()
    assert hostname == hostname_from_name(CRITEST_NAME) and len(hostname) == 63
    for path, expected in (("/proc/sys/kernel/shm_rmid_forced", "1"), ("/proc/sys/fs/mqueue/msg_max", "100")):
        assert (await runtime.exec_sync(container_id, ["cat", path], 30)).stdout.decode().strip() == expected

    [pod] = await runtime.list_sandbox_metrics()
    assert pod.sandbox_id == sandbox_id and pod.samples == (), "no CNI network, no network samples"
    [container] = pod.containers
    values = {sample.name: sample for sample in container.samples}
    assert values["container_memory_usage_bytes"].value > 64 << 20, "guest RAM QEMU touched while booting"
    assert values["container_cpu_usage_seconds_total"].value >= 1, "a TCG boot takes seconds of CPU"
    assert values["container_threads"].value >= 2 and values["container_file_descriptors"].value > 5
    assert values["container_processes"].value >= 1 and values["container_sockets"].value >= 3
    assert values["container_start_time_seconds"].value == runtime.container(container_id).status.started_at_ns // 10**9
    labels = values["container_threads"].label_values
    assert labels == ("vm", container_id, "tiny", "conformance", CRITEST_NAME)


async def test_a_command_can_be_a_job_whose_status_is_the_exit_code(tiny, tmp_path, runtime_dirs, runtimes) -> None:
    """vm.command_exit = poweroff makes every command a job; qmprt.io/command-exit=keep opts out."""
    runtime = await open_runtime(tiny, *runtime_dirs, command_exit="poweroff")
    runtimes.append(runtime)
    sandbox_id = await runtime.run_sandbox(sandbox_spec(tmp_path))
    job_id = await runtime.create_container(
        sandbox_id,
        container_spec(
            metadata=ContainerMetadata(name="job"), log_path="job.log", working_dir="/tmp",
            command=("sh", "-c", "pwd; printf 'no newline'; exit 3"),
        ),
    )
    await runtime.start_container(job_id)
    deadline = asyncio.get_running_loop().time() + BOOT_TIMEOUT
    while runtime.container(job_id).status.state != ContainerState.EXITED:
        assert asyncio.get_running_loop().time() < deadline, "the job's guest did not power off"
        await asyncio.sleep(0.2)
    job = runtime.container(job_id)
    assert (job.status.exit_code, job.status.reason) == (3, "Error"), job.status
    assert "status 3" in job.status.message
    log = Path(job.log_path).read_text()
    assert " stdout F /tmp\n" in log and " stdout F no newline\n" in log

    kept_id = await runtime.create_container(
        sandbox_id,
        container_spec(
            metadata=ContainerMetadata(name="kept"), log_path="kept.log", command=("echo", "kept running"),
            annotations={COMMAND_EXIT: "keep"},
        ),
    )
    await runtime.start_container(kept_id)
    await wait_for_log(runtime.container(kept_id).log_path, "kept running")
    await asyncio.sleep(1)
    assert runtime.container(kept_id).status.state == ContainerState.RUNNING
    assert (await runtime.exec_sync(kept_id, ["true"], 30)).exit_code == 0
    await runtime.stop_container(kept_id, 30)
