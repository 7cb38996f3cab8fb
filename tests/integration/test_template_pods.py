"""``qmprt.io/boot: template`` through a real ``qmprt serve``: the first pod boots cold and the template is
built in the background; the next two pods, started at once, are clones of it and must be two machines
(hostname, machine-id, random streams, files, their own container command), survive a qmprt restart,
and keep running when their template is removed. Bad template annotations are INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt import cgroups

from .conftest import TEST_CGROUP_ROOT
from .guests import ROOT, TinyGuest
from .serverproc import ServerProcess, served
from .test_cri_server import wait_for_log

IMAGE = "tpl.qmprt.test/tiny:1"
TEMPLATE = {"qmprt.io/boot": "template"}


@pytest.fixture(scope="module")
def server(tiny: TinyGuest, cgroup_driver: cgroups.CgroupDriver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with served(tmp_path_factory.mktemp("tpl"), tiny, f"{TEST_CGROUP_ROOT}/tpl", IMAGE) as server:
        yield server


@pytest.fixture
async def pulled(stubs: tuple[Any, Any]) -> None:
    await stubs[1].PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=IMAGE)), timeout=120)


def pod_config(tmp_path: Path, name: str, annotations: dict[str, str]) -> cri.PodSandboxConfig:
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=secrets.token_hex(8), namespace="default"),
        hostname=name, log_directory=str(tmp_path / name), annotations=annotations,
    )


async def create(runtime: Any, tmp_path: Path, name: str, annotations: dict[str, str] = TEMPLATE) -> tuple[str, str]:
    config = pod_config(tmp_path, name, annotations)
    pod_id = (await runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=config))).pod_sandbox_id
    container = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name="vm"), image=cri.ImageSpec(image=IMAGE), log_path="vm.log",
        command=["sh", "-c", f"echo command-of-{name}"],
    )
    request = cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=container, sandbox_config=config)
    return pod_id, (await runtime.CreateContainer(request)).container_id


async def start(runtime: Any, tmp_path: Path, name: str, container_id: str, tiny: TinyGuest) -> float:
    began = time.monotonic()
    await runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
    await wait_for_log(str(tmp_path / name / "vm.log"), tiny.ready_marker)
    return time.monotonic() - began


async def run(runtime: Any, container_id: str, *argv: str) -> str:
    answer = await runtime.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=list(argv), timeout=60))
    assert answer.exit_code == 0, (argv, answer.stderr)
    return answer.stdout.decode()


def record(server: ServerProcess, pod_id: str, container_id: str) -> dict[str, Any]:
    return json.loads((server.state_dir / "pods" / pod_id / container_id / "container.json").read_text())


async def wait_for_template(server: ServerProcess, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while not (ready := list((server.state_dir / "templates").glob("*/ready"))):
        assert time.monotonic() < deadline, f"no template built: {server.tail()}"
        await asyncio.sleep(0.2)
    return ready[0].parent


async def test_bad_template_annotations_are_invalid_argument(
    server: ServerProcess, stubs: tuple[Any, Any], pulled: None, tmp_path: Path
) -> None:
    runtime, _ = stubs
    cases = {
        "typo": ({"qmprt.io/boot": "templates"}, "qmprt.io/boot"),
        "configdrive": ({**TEMPLATE, "qmprt.io/seed-format": "configdrive"}, "configdrive seed"),
        "data volume": ({**TEMPLATE, "qmprt.io/data-volumes": "64Mi"}, "devices and volumes"),
    }
    for case, (given, words) in cases.items():
        with pytest.raises(aio.AioRpcError) as caught:
            await create(runtime, tmp_path, f"bad-{case.replace(' ', '-')}", given)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, caught.value.details())
        assert words in (caught.value.details() or ""), (case, caught.value.details())
    for pod in (await runtime.ListPodSandbox(cri.ListPodSandboxRequest())).items:
        await runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id))


async def test_clones_of_a_template_are_separate_machines_and_survive_a_restart(
    server: ServerProcess, stubs: tuple[Any, Any], pulled: None, tmp_path: Path, tiny: TinyGuest
) -> None:
    runtime, _ = stubs
    cold_pod, cold = await create(runtime, tmp_path, "cold")
    assert record(server, cold_pod, cold)["template"] == "", "no template yet: the first boots cold"
    cold_s = await start(runtime, tmp_path, "cold", cold, tiny)
    template = await wait_for_template(server)

    made = [await create(runtime, tmp_path, name) for name in ("clone-a", "clone-b")]
    assert all(record(server, pod, ctr)["template"] == template.name for pod, ctr in made)
    times = await asyncio.gather(*(start(runtime, tmp_path, name, ctr, tiny)
                                   for name, (_, ctr) in zip(("clone-a", "clone-b"), made)))
    print(f"cold start {cold_s:.2f} s; two clones at once {times}")
    seen = []
    for name, (_, ctr) in zip(("clone-a", "clone-b"), made):
        assert (await run(runtime, ctr, "hostname")).strip() == name
        await wait_for_log(str(tmp_path / name / "vm.log"), f"command-of-{name}")
        seen.append(((await run(runtime, ctr, "cat", "/etc/machine-id")).strip(),
                     await run(runtime, ctr, "sh", "-c", "cat /proc/sys/kernel/random/uuid; cat /proc/sys/kernel/random/uuid")))
    assert seen[0][0] != seen[1][0] and not set(seen[0][1].split()) & set(seen[1][1].split())
    await run(runtime, made[0][1], "sh", "-c", "echo a > /root/only-in-a; sync")
    absent = await runtime.ExecSync(cri.ExecSyncRequest(container_id=made[1][1], cmd=["test", "-e", "/root/only-in-a"], timeout=30))
    assert absent.exit_code == 1

    qemus = sorted(p.pid for p in server.qemu_processes())
    server.stop()
    server.start()
    assert sorted(p.pid for p in server.qemu_processes()) == qemus, "the clones survive qmprt's restart"
    for template_dir in (server.state_dir / "templates").iterdir():  # removing the template while clones run
        for child in template_dir.iterdir():
            child.unlink()
        template_dir.rmdir()
    channel = aio.insecure_channel(server.address)
    runtime = api_pb2_grpc.RuntimeServiceStub(channel)  # the fixture's channel went with the old server
    try:
        for name, (_, ctr) in zip(("clone-a", "clone-b"), made):
            assert (await run(runtime, ctr, "hostname")).strip() == name
        for pod in (await runtime.ListPodSandbox(cri.ListPodSandboxRequest())).items:
            await runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
            await runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
    finally:
        await channel.close()


def ctl_template(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "qmprt.cli", "ctl", "template", *args, "--config", str(server.config)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


async def test_ctl_template_warm_ls_rm(server: ServerProcess, pulled: None) -> None:
    """The server's pods here have no CNI network (0 NICs) and no memory limit (vm.memory_mib)."""
    first = ctl_template(server, "warm", IMAGE, "--nics", "0")
    assert first.returncode == 0, first.stderr
    template_id = first.stdout.split()[0]
    again = ctl_template(server, "warm", IMAGE, "--nics", "0")
    assert again.stdout == f"{template_id} (ready already)\n"
    listed = ctl_template(server, "ls")
    assert template_id in listed.stdout and listed.stdout.startswith("TEMPLATE")
    assert ctl_template(server, "rm", template_id).stdout == f"Deleted: {template_id}\n"
    missing = ctl_template(server, "rm", template_id)
    assert missing.returncode == 1 and "no template" in missing.stderr
    assert ctl_template(server, "ls").stdout.count("\n") == 1, "only the header"
